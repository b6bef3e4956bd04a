using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>Issue 3, acceptance 2: images pass back and forth between this library and QEMU.</summary>
[TestFixture]
[Category("Interop")]
public class QemuRoundTripTests : TempDirectoryFixture
{
    private const int Cluster = 65536;

    [TestCase(2)]
    [TestCase(3)]
    public void Qemu_writes_and_reads_our_images_and_we_read_its_writes(int version)
    {
        var path = PathOf("image.qcow2");
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 32 << 20, Version = version }))
        {
            image.Write(0, Filled(0x11, 3 * Cluster));
            image.Write(5_000_000, Filled(0x12, 10_000));
            image.WriteZeroes(Cluster, Cluster);
        }

        Qemu.Io(path, "read -P 0x11 0 64k", "read -P 0 64k 64k", "read -P 0x11 128k 64k", "read -P 0x12 5000000 10000",
            "write -P 0x21 32k 64k", "write -P 0x22 20M 1M", "write -z 128k 64k", "discard 5M 1M");
        Qemu.AssertClean(path);

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            Read(image, 0, 32 * 1024).ShouldAllBe(b => b == 0x11);
            Read(image, 32 * 1024, Cluster).ShouldAllBe(b => b == 0x21);
            Read(image, 20 << 20, 1 << 20).ShouldAllBe(b => b == 0x22);
            Read(image, 128 * 1024, Cluster).ShouldAllBe(b => b == 0);
            image.Write(20 << 20, Filled(0x31, 4096));
        }

        Qemu.Io(path, "read -P 0x31 20M 4k", "read -P 0x22 20484k 1020k");
        Qemu.AssertClean(path);
    }

    [Test]
    public void Qemu_copies_on_write_over_our_shared_clusters_and_our_next_write_restores_copied()
    {
        var path = PathOf("shared.qcow2");
        var allocator = new SharingTestAllocator();
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 8 << 20, OpenOptions = new Qcow2OpenOptions { Allocator = allocator } }))
        {
            image.Write(0, Filled(0x41, Cluster));
            image.Write(Cluster, Filled(0x41, Cluster));
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "write -P 0x42 65536 4k");
        Qemu.Io(path, "read -P 0x41 0 64k", "read -P 0x42 64k 4k", "read -P 0x41 68k 60k");

        // QEMU cannot know the survivor's other referrer is gone: COPIED stays clear at refcount 1.
        var afterQemu = Qemu.Check(path);
        afterQemu.Corruptions.ShouldBe(1, afterQemu.Text);
        afterQemu.Text.ShouldContain("OFLAG_COPIED data cluster");

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(100, new byte[] { 0x43 });
        }

        new L2Entry(ImagePatch.ReadU64(path, ImagePatch.L2EntryOffset(path, 0))).IsCopied.ShouldBeTrue();
        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x41 0 100", "read -P 0x43 100 1", "read -P 0x41 101 65435");
    }

    [Test]
    public void Our_writes_to_images_with_qemu_snapshots_copy_instead_of_writing_in_place()
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create("snap.qcow2", 8 << 20);
        builder.Io(path, "write -P 0x51 0 256k");
        Qemu.Img("snapshot", "-c", "before", path);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(4096, Filled(0x52, 8192));
        }

        Qemu.AssertClean(path);
        var snapshot = PathOf("before.raw");
        Qemu.Img("convert", "-l", "snapshot.name=before", "-O", "raw", path, snapshot);
        File.ReadAllBytes(snapshot).AsSpan(0, 256 * 1024).ToArray().ShouldAllBe(b => b == 0x51);
        Qemu.Io(path, "read -P 0x51 0 4k", "read -P 0x52 4k 8k", "read -P 0x51 12k 244k");
    }

    private static byte[] Filled(byte value, int length)
    {
        var bytes = new byte[length];
        Array.Fill(bytes, value);
        return bytes;
    }

    private static byte[] Read(Qcow2Image image, long offset, int length)
    {
        var buffer = new byte[length];
        image.Read(offset, buffer);
        return buffer;
    }
}
