using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Robustness;

/// <summary>
/// Issue 5, overlap protection: a damaged image whose L2 entry points a guest cluster at live
/// metadata must not have that metadata overwritten by a guest write. As in QEMU, the write
/// fails, the image is marked corrupt on disk, and no further writes are taken.
/// </summary>
[TestFixture]
[Category("Interop")]
public class OverlapProtectionTests : TempDirectoryFixture
{
    [TestCase("refcount block")]
    [TestCase("active L1 table")]
    [TestCase("active L2 table")]
    [TestCase("refcount table")]
    public void A_guest_write_aimed_at_metadata_is_refused_and_the_image_marked_corrupt(string target)
    {
        var path = PathOf("overlap.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 0x11 0 64k");
        var header = ImagePatch.ReadHeader(path).Header;
        var entryOffset = ImagePatch.L2EntryOffset(path, 0);
        var host = target switch
        {
            "refcount block" => (long)ImagePatch.ReadU64(path, header.RefcountTableOffset),
            "active L1 table" => header.L1TableOffset,
            "active L2 table" => entryOffset & ~(long)(header.ClusterSize - 1),
            _ => header.RefcountTableOffset,
        };

        ImagePatch.WriteU64(path, entryOffset, L2Entry.Normal(host, copied: true).Raw);
        var before = File.ReadAllBytes(path).AsSpan((int)host, header.ClusterSize).ToArray();

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            var data = Enumerable.Repeat((byte)0xee, 4096).ToArray();
            var error = Should.Throw<InvalidDataException>(() => image.Write(0, data));
            error.Message.ShouldContain("Preventing invalid write on metadata");
            error.Message.ShouldContain(target);
            Should.Throw<InvalidDataException>(() => image.Write(1 << 20, data)).Message.ShouldContain("marked corrupt");
        }

        File.ReadAllBytes(path).AsSpan((int)host, header.ClusterSize).ToArray().ShouldBe(before, $"the {target} is untouched");
        ImagePatch.ReadHeader(path).Header.Incompatible.HasFlag(IncompatibleFeatures.Corrupt).ShouldBeTrue();
        Qemu.Img("info", path).ShouldContain("corrupt: true");
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }));
        using var readOnly = Qcow2Image.Open(path);
        readOnly.Read(64 * 1024, new byte[4096]); // still readable
    }

    [Test]
    public void Ordinary_writes_never_trip_the_overlap_check()
    {
        var path = PathOf("fine.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            for (var i = 0; i < 32; i++)
            {
                image.Write(i * 65536L, Enumerable.Repeat((byte)(i + 1), 65536).ToArray()); // fresh clusters never collide
            }
        }

        Qemu.AssertClean(path);
        Qemu.Img("info", path).ShouldContain("corrupt: false");
    }
}
