using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Robustness;

/// <summary>
/// Issue 9, item 7: a structure the metadata references is in use whatever its refcount says. A
/// hostile image that zeroes the refcount of a snapshot-only L2 table must not get that table
/// handed out by allocation and overwritten with guest data (QEMU, whose default overlap check
/// skips inactive L2 tables, does overwrite it).
/// </summary>
[TestFixture]
[Category("Interop")]
public class ZeroRefcountMetadataTests : TempDirectoryFixture
{
    [Test]
    public void A_snapshot_structure_with_refcount_zero_is_not_allocated_for_guest_data(
        [Values("snapshot L2 table", "snapshot L1 table", "snapshot table")] string target, [Values] bool async)
    {
        var path = PathOf("hostile.qcow2");
        var twin = PathOf("twin.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "64M");
        Qemu.Io(path, "write -P 0x11 0 1M");
        Qemu.Img("snapshot", "-c", "s1", path);
        Qemu.Io(path, "write -P 0x22 0 1M"); // copies the active L2 table: the old one is the snapshot's alone

        var header = ImagePatch.ReadHeader(path).Header;
        long snapshotL2;
        long snapshotL1;
        using (var image = Qcow2Image.Open(path))
        {
            var snapshot = image.Snapshots.ShouldHaveSingleItem();
            snapshotL1 = snapshot.L1TableOffset;
            snapshotL2 = (long)(ImagePatch.ReadU64(path, snapshot.L1TableOffset) & L1Entry.OffsetMask);
        }

        (ImagePatch.ReadU64(path, header.L1TableOffset) & L1Entry.OffsetMask).ShouldNotBe((ulong)snapshotL2, "the active layer must have its own L2 table");
        var victim = target switch
        {
            "snapshot L2 table" => snapshotL2,
            "snapshot L1 table" => snapshotL1,
            _ => header.SnapshotsOffset,
        };
        ZeroRefcount(path, header, victim);
        File.Copy(path, twin);
        var tableBefore = ReadCluster(path, victim, header.ClusterSize);

        var data = Enumerable.Repeat((byte)0x33, 64 << 10).ToArray(); // one cluster: QEMU puts it in the one-cluster hole
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            if (async)
            {
                image.WriteAsync(8 << 20, data).AsTask().GetAwaiter().GetResult();
            }
            else
            {
                image.Write(8 << 20, data);
            }
        }

        Qemu.IoUnchecked(twin, "write -P 0x33 8M 64k"); // QEMU refuses what its overlap check covers
        ReadCluster(path, victim, header.ClusterSize).ShouldBe(tableBefore, $"the {target} was overwritten");
        var ours = Qemu.Check(path);
        var qemus = Qemu.Check(twin);
        TestContext.Out.WriteLine($"{target}: corruptions: ours {ours.Corruptions}, QEMU's {qemus.Corruptions}");
        ours.Corruptions.ShouldBeLessThanOrEqualTo(qemus.Corruptions, ours.Text);
        ours.Corruptions.ShouldBe(1, ours.Text); // only the zeroed refcount itself
        Qemu.Io(path, "read -P 0x33 8M 64k");
        Qemu.Io(path, "read -P 0x22 0 1M");
    }

    [Test]
    public void An_active_structure_with_refcount_zero_never_receives_guest_data(
        [Values("active L2 table", "active L1 table", "refcount block", "refcount table", "bitmap directory", "bitmap table")] string target)
    {
        var path = PathOf("hostile.qcow2");
        var twin = PathOf("twin.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "64M");
        Qemu.Img("bitmap", "--add", path, "b0");
        Qemu.Io(path, "write -P 0x11 0 1M"); // the bitmap gets dirty bits, stored in a table at close
        var header = ImagePatch.ReadHeader(path).Header;
        long bitmapTable;
        using (var image = Qcow2Image.Open(path))
        {
            bitmapTable = image.Bitmaps.ShouldHaveSingleItem().TableOffset;
        }

        var victim = target switch
        {
            "bitmap directory" => ImagePatch.ReadHeader(path).Bitmaps!.DirectoryOffset,
            "bitmap table" => bitmapTable,
            "active L2 table" => (long)(ImagePatch.ReadU64(path, header.L1TableOffset) & L1Entry.OffsetMask),
            "active L1 table" => header.L1TableOffset,
            "refcount block" => (long)ImagePatch.ReadU64(path, header.RefcountTableOffset),
            _ => header.RefcountTableOffset,
        };
        ZeroRefcount(path, header, victim);
        File.Copy(path, twin);

        // The write may be refused (a table in use with refcount 0 is corrupt), but no guest byte
        // may land on the structure.
        var data = Enumerable.Repeat((byte)0x33, 64 << 10).ToArray();
        try
        {
            using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true });
            image.Write(8 << 20, data);
        }
        catch (InvalidDataException e)
        {
            TestContext.Out.WriteLine($"{target}: refused: {e.Message}");
        }

        ReadCluster(path, victim, header.ClusterSize).ShouldNotBe(data, $"guest data landed on the {target}");
        Qemu.IoUnchecked(twin, "write -P 0x33 8M 64k");
        var ours = Qemu.Check(path);
        var qemus = Qemu.Check(twin);
        TestContext.Out.WriteLine($"{target}: corruptions: ours {ours.Corruptions}, QEMU's {qemus.Corruptions}");
        ours.Corruptions.ShouldBeLessThanOrEqualTo(Math.Max(1, qemus.Corruptions), ours.Text);
    }

    /// <summary>Sets the refcount of the cluster at <paramref name="host"/> to 0 in its refcount block.</summary>
    private static void ZeroRefcount(string path, Qcow2Header header, long host)
    {
        var refcountBits = 1 << header.RefcountOrder;
        var entriesPerBlock = (header.ClusterSize * 8) / refcountBits;
        var cluster = host >> header.ClusterBits;
        var block = (long)ImagePatch.ReadU64(path, header.RefcountTableOffset + ((cluster / entriesPerBlock) * 8));
        block.ShouldNotBe(0);
        refcountBits.ShouldBe(16, "the test edits 16-bit refcounts");
        var entry = block + ((cluster % entriesPerBlock) * 2);
        var bytes = new byte[2];
        using (var file = File.OpenRead(path))
        {
            file.Position = entry;
            file.ReadExactly(bytes);
        }

        BinaryPrimitives.ReadUInt16BigEndian(bytes).ShouldBe((ushort)1);
        ImagePatch.WriteBytes(path, entry, [0, 0]);
    }

    private static byte[] ReadCluster(string path, long offset, int size)
    {
        using var file = File.OpenRead(path);
        var buffer = new byte[size];
        file.Position = offset;
        file.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false); // a small structure may end the file
        return buffer;
    }
}
