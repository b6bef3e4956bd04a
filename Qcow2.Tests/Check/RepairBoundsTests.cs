using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Check;

/// <summary>
/// Issue 9, item 6: a repair never grows the file far beyond what the image's metadata justifies.
/// QEMU extends the file to reach a refcount block that lies past its end — for a table entry
/// pointing at 46 TiB that is a 46 TiB file, gigabytes of RAM and a walk over every cluster. We
/// treat such an entry as corrupt and rebuild the refcount structure inside the file.
/// </summary>
[TestFixture]
[Category("Interop")]
public sealed class RepairBoundsTests : TempDirectoryFixture
{
    private const int ClusterSize = 64 * 1024;

    /// <summary>A file may grow by this much during a repair, and no more (generous: the image is a few clusters).</summary>
    private const long AllowedGrowth = 64L << 20;

    [Test]
    public void Writable_open_of_a_dirty_image_with_a_refcount_block_far_past_the_end_rebuilds_inside_the_file([Values(0, 1)] int tableIndex, [Values(4L << 40, 46L << 40)] long farAway)
    {
        var path = DirtyLazyImage();
        PointRefcountTableEntryAt(path, tableIndex, farAway);
        var before = new FileInfo(path).Length;

        using (Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            new FileInfo(path).Length.ShouldBeLessThan(before + AllowedGrowth, "the open repaired the dirty image without growing it towards 46 TiB");
        }

        new FileInfo(path).Length.ShouldBeLessThan(before + AllowedGrowth);
        Qemu.AssertClean(path);
        AssertGuestData(path);
    }

    [Test]
    public void Check_repair_all_of_a_refcount_block_far_past_the_end_rebuilds_inside_the_file([Values(0, 1)] int tableIndex, [Values(4L << 40, 46L << 40)] long farAway)
    {
        var path = PathOf("far.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536", path, "64M");
        Qemu.Io(path, "write -P 0x71 0 256k", "write -P 0x72 3M 64k");
        PointRefcountTableEntryAt(path, tableIndex, farAway);
        var before = new FileInfo(path).Length;

        CheckResult result;
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, ForRepair = true }))
        {
            result = image.Check(CheckRepair.All);
        }

        new FileInfo(path).Length.ShouldBeLessThan(before + AllowedGrowth, string.Join('\n', result.Messages));
        result.IsClean.ShouldBeTrue(string.Join('\n', result.Messages));
        result.Messages.ShouldContain(m => m.Contains("outside image", StringComparison.Ordinal));
        Qemu.AssertClean(path);
        AssertGuestData(path);
    }

    [Test]
    public void Check_without_repair_of_a_refcount_block_far_past_the_end_reads_like_qemu_img()
    {
        var path = PathOf("far.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536", path, "64M");
        Qemu.Io(path, "write -P 0x71 0 256k");
        PointRefcountTableEntryAt(path, 1, 46L << 40);
        var before = new FileInfo(path).Length;

        var theirs = Qemu.ImgResult("check", "--output=json", path);
        var ours = CliRunner.Run("check", "--output", "json", path);

        ours.ExitCode.ShouldBe(theirs.ExitCode, ours.Error);
        ours.Output.ShouldBe(theirs.Output);
        new FileInfo(path).Length.ShouldBe(before);
    }

    private string DirtyLazyImage()
    {
        var path = PathOf("dirty.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536,lazy_refcounts=on", path, "64M");
        Qemu.IoUnchecked(path, "write -P 0x71 0 256k", "write -P 0x72 3M 64k", "flush", "abort");
        (ImagePatch.ReadHeader(path).Header.Incompatible & QcowDedup.Qcow2.Format.IncompatibleFeatures.Dirty).ShouldNotBe(default, "qemu-io aborted with the dirty bit set");
        return path;
    }

    private static void PointRefcountTableEntryAt(string path, int index, long offset) =>
        ImagePatch.WriteU64(path, ImagePatch.ReadHeader(path).Header.RefcountTableOffset + (index * 8L), (ulong)offset);

    private void AssertGuestData(string path)
    {
        var raw = PathOf("guest.raw");
        Qemu.Img("convert", "-U", "-f", "qcow2", "-O", "raw", path, raw);
        var bytes = File.ReadAllBytes(raw);
        bytes.AsSpan(0, 256 * 1024).IndexOfAnyExcept((byte)0x71).ShouldBe(-1);
        bytes.AsSpan(3 << 20, ClusterSize).IndexOfAnyExcept((byte)0x72).ShouldBe(-1);
    }
}
