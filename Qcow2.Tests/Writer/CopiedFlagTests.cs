using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// QEMU writes into a data cluster in place only when its L2 entry has COPIED set; we also demand
/// refcount 1 (DESIGN §4). An entry without COPIED is copied on write even when its refcount says
/// 1: on a damaged image that cluster may be another entry's data or another structure's table.
/// </summary>
[TestFixture]
[Category("Interop")]
public class CopiedFlagTests : TempDirectoryFixture
{
    private const int ClusterSize = 65536;
    private const int PartialStart = 100;
    private const int PartialLength = 5000;

    public enum Change
    {
        PartialWrite,
        WholeWrite,
        PartialWriteWithDedup,
        WholeWriteWithDedup,
        PartialZeroes,
        WholeZeroesKeepingTheCluster,
        WholeZeroesUnmapped,
        Discard,
        CompressedWrite,
    }

    [Test]
    public void A_cluster_whose_entry_lacks_copied_is_never_changed_in_place([Values] Change change)
    {
        var path = PathOf("uncopied.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 0x11 0 64k", "write -P 0x22 64k 64k");
        var entryOffset = ImagePatch.L2EntryOffset(path, 0);
        var entry = new L2Entry(ImagePatch.ReadU64(path, entryOffset));
        ImagePatch.WriteU64(path, entryOffset, entry.WithCopied(false).Raw); // refcount stays 1
        var host = entry.HostOffset;

        Apply(path, change);

        HostBytes(path, host).ShouldAllBe(b => b == 0x11, "the old host cluster was written in place");
        ExpectedGuestCluster(change).ShouldBe(GuestCluster(path, 0));
        Qemu.Io(path, "read -P 0x22 64k 64k");
        var check = Qemu.Check(path);
        check.Leaks.ShouldBe(0, check.Text);
        // Zeroing without unmapping keeps the entry's host cluster and its flags, as QEMU does.
        check.Corruptions.ShouldBe(change == Change.WholeZeroesKeepingTheCluster ? 1 : 0, check.Text);
    }

    [Test]
    public void A_damaged_image_where_two_entries_share_a_cluster_of_refcount_1_keeps_the_other_entry_intact([Values(Change.PartialWrite, Change.WholeWrite, Change.PartialZeroes, Change.PartialWriteWithDedup)] Change change)
    {
        // Guest cluster 1 is pointed at guest cluster 0's host cluster, neither with COPIED: the
        // refcount (1) undercounts, as it would for a table or bitmap a damaged L2 entry points at.
        var path = PathOf("shared-by-damage.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 0x11 0 64k", "write -P 0x22 64k 64k");
        var first = ImagePatch.L2EntryOffset(path, 0);
        var entry = new L2Entry(ImagePatch.ReadU64(path, first)).WithCopied(false);
        ImagePatch.WriteU64(path, first, entry.Raw);
        ImagePatch.WriteU64(path, ImagePatch.L2EntryOffset(path, ClusterSize), entry.Raw);

        Apply(path, change);

        GuestCluster(path, ClusterSize).ShouldAllBe(b => b == 0x11, "guest cluster 1 lost its bytes to a write to guest cluster 0");
        HostBytes(path, entry.HostOffset).ShouldAllBe(b => b == 0x11);
        ExpectedGuestCluster(change).ShouldBe(GuestCluster(path, 0));
    }

    [Test]
    public void Downgrading_to_v2_writes_the_zeros_of_an_entry_without_copied_into_a_fresh_cluster()
    {
        // Guest cluster 0 is a zero cluster keeping its host cluster; guest cluster 1 is pointed at
        // that same host cluster by damage, neither entry with COPIED, refcount 1.
        var path = PathOf("downgrade.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 0x11 0 64k", "write -P 0x22 64k 64k", "write -z 0 64k");
        var first = ImagePatch.L2EntryOffset(path, 0);
        var zero = new L2Entry(ImagePatch.ReadU64(path, first));
        zero.HasZeroFlag.ShouldBeTrue();
        ImagePatch.WriteU64(path, first, zero.WithCopied(false).Raw);
        ImagePatch.WriteU64(path, ImagePatch.L2EntryOffset(path, ClusterSize), L2Entry.Normal(zero.HostOffset, copied: false).Raw);

        Qcow2Image.Amend(path, new Qcow2AmendOptions { Version = 2 });

        HostBytes(path, zero.HostOffset).ShouldAllBe(b => b == 0x11, "the shared host cluster was overwritten with zeros");
        GuestCluster(path, ClusterSize).ShouldAllBe(b => b == 0x11);
        GuestCluster(path, 0).ShouldAllBe(b => b == 0);
    }

    private static void Apply(string path, Change change)
    {
        var options = new Qcow2OpenOptions { Writable = true };
        if (change is Change.PartialWriteWithDedup or Change.WholeWriteWithDedup)
        {
            options = options.WithDedup();
        }

        using var image = Qcow2Image.Open(path, options);
        var data = Enumerable.Repeat((byte)0x33, ClusterSize).ToArray();
        switch (change)
        {
            case Change.PartialWrite or Change.PartialWriteWithDedup:
                image.Write(PartialStart, data.AsSpan(0, PartialLength));
                break;
            case Change.WholeWrite or Change.WholeWriteWithDedup:
                image.Write(0, data);
                break;
            case Change.PartialZeroes:
                image.WriteZeroes(PartialStart, PartialLength);
                break;
            case Change.WholeZeroesKeepingTheCluster:
                image.WriteZeroes(0, ClusterSize);
                break;
            case Change.WholeZeroesUnmapped:
                image.WriteZeroes(0, ClusterSize, unmap: true);
                break;
            case Change.Discard:
                image.Discard(0, ClusterSize);
                break;
            case Change.CompressedWrite:
                image.WriteCompressed(0, data);
                break;
        }
    }

    private static byte[] ExpectedGuestCluster(Change change)
    {
        var expected = Enumerable.Repeat((byte)0x11, ClusterSize).ToArray();
        switch (change)
        {
            case Change.PartialWrite or Change.PartialWriteWithDedup:
                expected.AsSpan(PartialStart, PartialLength).Fill(0x33);
                break;
            case Change.WholeWrite or Change.WholeWriteWithDedup or Change.CompressedWrite:
                expected.AsSpan().Fill(0x33);
                break;
            case Change.PartialZeroes:
                expected.AsSpan(PartialStart, PartialLength).Clear();
                break;
            default:
                expected.AsSpan().Clear();
                break;
        }

        return expected;
    }

    private static byte[] GuestCluster(string path, long offset)
    {
        using var image = Qcow2Image.Open(path);
        var bytes = new byte[ClusterSize];
        image.Read(offset, bytes);
        return bytes;
    }

    private static byte[] HostBytes(string path, long offset)
    {
        using var file = File.OpenRead(path);
        var bytes = new byte[ClusterSize];
        file.Position = offset;
        file.ReadAtLeast(bytes, bytes.Length, throwOnEndOfStream: false);
        return bytes;
    }
}
