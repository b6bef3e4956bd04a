using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Robustness;

/// <summary>
/// Hostile and damaged images fail with an exception that names the broken structure — never a
/// crash, a hang or a huge allocation.
/// </summary>
[TestFixture]
[Category("Interop")]
public class MalformedImageTests : TempDirectoryFixture
{
    private ImageBuilder _builder = null!;
    private string _image = string.Empty;

    [SetUp]
    public void MakeImage()
    {
        _builder = new ImageBuilder(Directory);
        _image = _builder.Create("image.qcow2", 64 << 20);
        _builder.Io(_image, "write -P 0x5a 0 128k");
    }

    [TestCase(50, "header")]
    [TestCase(100, "header")]
    [TestCase(0x20000, "L1 table")]
    public void Truncated_file_names_the_missing_structure(long length, string structure)
    {
        ImagePatch.Truncate(_image, length);
        Should.Throw<InvalidDataException>(() => ReadEverything(_image)).Message.ShouldContain(structure);
    }

    [Test]
    public void Empty_file_is_not_a_qcow2_image()
    {
        ImagePatch.Truncate(_image, 0);
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("header");
    }

    [TestCase(8u)]
    [TestCase(22u)]
    [TestCase(0xffffffffu)]
    public void Cluster_bits_out_of_range(uint clusterBits)
    {
        ImagePatch.WriteU32(_image, 20, clusterBits);
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("cluster_bits");
    }

    [TestCase(0x7fffffffu)]
    [TestCase(0x00400001u)]
    public void Absurd_l1_size_is_refused_before_allocating(uint l1Size)
    {
        ImagePatch.WriteU32(_image, 36, l1Size);
        var before = GC.GetAllocatedBytesForCurrentThread();
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("L1 table");
        (GC.GetAllocatedBytesForCurrentThread() - before).ShouldBeLessThan(8L << 20);
    }

    [Test]
    public void L1_table_past_the_end_of_the_file()
    {
        ImagePatch.WriteU64(_image, 40, 1UL << 40);
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("active L1 table");
    }

    [Test]
    public void L2_entry_past_the_end_of_the_file()
    {
        var entry = ImagePatch.L2EntryOffset(_image, 65536);
        ImagePatch.WriteU64(_image, entry, L2Entry.Normal(1L << 40, copied: true).Raw);
        var error = Should.Throw<InvalidDataException>(() => ReadEverything(_image));
        error.Message.ShouldContain("L2 table");
        error.Message.ShouldContain("past the end of the file");
    }

    [Test]
    public void Unaligned_l2_table_offset()
    {
        var header = ImagePatch.ReadHeader(_image).Header;
        var l1Entry = ImagePatch.ReadU64(_image, header.L1TableOffset);
        ImagePatch.WriteU64(_image, header.L1TableOffset, l1Entry + 512);
        Should.Throw<InvalidDataException>(() => ReadEverything(_image)).Message.ShouldContain("not cluster aligned");
    }

    [Test]
    public void Header_extension_longer_than_cluster_0()
    {
        // The feature name table is the first extension of a QEMU image (offset 112); claim 1 MiB.
        ImagePatch.WriteU32(_image, 116, 1 << 20);
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("header extension");
    }

    [Test]
    public void Backing_chain_loop_is_reported()
    {
        var a = _builder.Create("a.qcow2", 1 << 20);
        var b = _builder.Create("b.qcow2", 1 << 20, backing: "a.qcow2", backingFormat: "qcow2");
        Qemu.Img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a);

        var error = Should.Throw<InvalidDataException>(() => Qcow2Image.Open(b));
        error.Message.ShouldContain("backing chain");
        error.Message.ShouldContain("loop");
    }

    [Test]
    public void Missing_backing_file_names_it()
    {
        _builder.Create("gone.qcow2", 1 << 20);
        var overlay = _builder.Create("overlay.qcow2", 1 << 20, backing: "gone.qcow2", backingFormat: "qcow2");
        File.Delete(_builder.PathOf("gone.qcow2"));
        Should.Throw<FileNotFoundException>(() => Qcow2Image.Open(overlay)).Message.ShouldContain("gone.qcow2");
    }

    [Test]
    public void An_empty_backing_file_name_means_no_backing_file_as_in_qemu([Values] bool writable)
    {
        // A name of length 0 at a nonzero backing_file_offset: QEMU reads an empty name and opens no backing file.
        ImagePatch.WriteU64(_image, 8, 0x1000);
        ImagePatch.WriteU32(_image, 16, 0);
        Qemu.Img("info", _image).ShouldNotContain("backing file");

        using (var image = Qcow2Image.Open(_image, new Qcow2OpenOptions { Writable = writable }))
        {
            image.Header.BackingFileName.ShouldBeNull();
            image.BackingChain.Count.ShouldBe(1);
            var read = new byte[128 << 10];
            image.Read(0, read);
            read.ShouldAllBe(b => b == 0x5a);
            if (writable)
            {
                image.Write(1 << 20, read);
            }
        }

        Qemu.AssertClean(_image);
        Qemu.Io(_image, "read -P 0x5a 0 128k");
    }

    [Test]
    public void An_empty_backing_format_means_probe_the_backing_file_as_in_qemu()
    {
        var overlay = _builder.Create("overlay.qcow2", 64 << 20, backing: "image.qcow2", backingFormat: "qcow2");
        ImagePatch.EditHeader(overlay, header => header with { BackingFormat = string.Empty });
        Qemu.Io(overlay, "read -P 0x5a 0 128k"); // QEMU probes the backing file's format

        using var image = Qcow2Image.Open(overlay);
        image.Header.BackingFormat.ShouldBeNull();
        image.BackingChain[1].Format.ShouldBe("qcow2");
        var read = new byte[128 << 10];
        image.Read(0, read);
        read.ShouldAllBe(b => b == 0x5a);
    }

    [Test]
    public void Snapshot_table_past_the_end_of_the_file()
    {
        ImagePatch.WriteU32(_image, 60, 65536);
        ImagePatch.WriteU64(_image, 64, 1UL << 40);
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("snapshot table");
    }

    [Test]
    public void Compressed_entry_with_garbage_data_names_the_compressed_cluster()
    {
        var entry = ImagePatch.L2EntryOffset(_image, 0);
        var hostOffset = (long)(ImagePatch.ReadU64(_image, entry) & L2Entry.OffsetMask);
        ImagePatch.WriteU64(_image, entry, CompressedClusterDescriptor.Encode(hostOffset, 4000, 16).Raw);
        Should.Throw<InvalidDataException>(() => ReadEverything(_image)).Message.ShouldContain("compressed cluster");
    }

    private static void ReadEverything(string path)
    {
        using var image = Qcow2Image.Open(path);
        using var stream = image.OpenStream();
        stream.CopyTo(Stream.Null);
    }
}
