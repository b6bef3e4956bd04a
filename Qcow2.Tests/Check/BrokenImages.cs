using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Check;

/// <summary>The counts qemu-img check reports for a kind of damage (pinned, so a patch that breaks nothing cannot pass).</summary>
public sealed record QemuCounts(int Corruptions, int Leaks, int CheckErrors);

/// <summary>
/// One kind of damage in the check parity corpus: a valid image made by qemu-img/qemu-io
/// (<see cref="Build"/>), the bytes patched to break it (<see cref="Break"/>), what qemu-img 7.2
/// check reports for it, and whether qemu-img check -r all can repair it.
/// </summary>
/// <param name="Name">Test case name.</param>
/// <param name="Build">Makes the valid image at the given path.</param>
/// <param name="Break">Patches it.</param>
/// <param name="Expected">qemu-img check's counts for the broken image.</param>
/// <param name="QemuRepairs">Whether qemu-img check -r all leaves it clean.</param>
/// <param name="BrokenGuest">Guest ranges whose bytes the damage itself changes (excluded from the "intact data" comparison).</param>
/// <param name="ReadableAfterRepair">Whether QEMU can read the guest disk after -r all (false when its mapping stays broken).</param>
/// <param name="Salvage">Where qemu-img cannot repair the kind: what qcow2 check -r all says it changed or dropped to repair it (issue 9).</param>
public sealed record BrokenImage(
    string Name,
    Action<string> Build,
    Action<string> Break,
    QemuCounts Expected,
    bool QemuRepairs,
    (long Offset, long Length)[] BrokenGuest,
    bool ReadableAfterRepair = true,
    string? Salvage = null)
{
    public override string ToString() => Name;
}

/// <summary>
/// The corpus. Most kinds start from the same image: 64 MiB, 64 KiB clusters, 16-bit refcounts,
/// guest data 0x11 at [0, 128 KiB), 0x22 at 1 MiB and 0x33 at 2 MiB (one cluster each) — so the
/// header is cluster 0, the refcount table 1, its block 2, the L1 table 3, the L2 table 4 and the
/// data clusters 5 to 8.
/// </summary>
public static class BrokenImages
{
    public const int ClusterSize = 64 * 1024;
    public const long DiskSize = 64L << 20;
    public const long SecondData = 1L << 20;

    private const ulong Copied = 1UL << 63;

    public static IReadOnlyList<BrokenImage> All { get; } =
    [
        new("leaked_cluster", Standard, p =>
        {
            var end = FileClusters(p);
            ImagePatch.Truncate(p, (end + 2) * ClusterSize);
            SetRefcount(p, end + 1, 1);
        }, new(0, 1, 0), QemuRepairs: true, []),
        new("refcount_too_low", Snapshotted, p => SetRefcount(p, DataCluster(p, SecondData), 1), new(2, 0, 0), QemuRepairs: true, []),
        new("refcount_zero_for_used_data_cluster", Standard, p => SetRefcount(p, DataCluster(p, SecondData), 0), new(2, 0, 0), QemuRepairs: true, []),
        new("l2_table_with_refcount_two", Standard, p => SetRefcount(p, L2Table(p) / ClusterSize, 2), new(1, 1, 0), QemuRepairs: true, []),
        new("copied_missing_on_data", Standard, p => Clear(p, L2EntryAt(p, SecondData), Copied), new(1, 0, 0), QemuRepairs: true, []),
        new("copied_set_on_shared_data", Snapshotted, p => Set(p, L2EntryAt(p, SecondData), Copied), new(1, 0, 0), QemuRepairs: true, []),
        new("copied_missing_on_l2_table", Standard, p => Clear(p, L1EntryAt(p), Copied), new(1, 0, 0), QemuRepairs: true, []),
        new("copied_set_on_shared_l2_table", Snapshotted, p => Set(p, L1EntryAt(p), Copied), new(1, 0, 0), QemuRepairs: true, []),
        new("l1_entry_reserved_bits", Standard, p => Set(p, L1EntryAt(p), 0x100), new(1, 0, 0), QemuRepairs: false, [],
            Salvage: "Cleared reserved bits 0x100 of L1 entry 0 (guest offset range [0x0, 0x20000000)); its L2 table at 0x40000 is kept"),
        new("l2_entry_reserved_bits", Standard, p => Set(p, L2EntryAt(p, SecondData), 0x2), new(1, 0, 0), QemuRepairs: false, [],
            Salvage: "Cleared reserved bits 0x2 of the L2 entry for guest offset 0x100000; its host cluster at 0x70000 is kept"),
        new("l2_table_unaligned", Standard, p => ImagePatch.WriteU64(p, L1EntryAt(p), ImagePatch.ReadU64(p, L1EntryAt(p)) + 0x200),
            new(193, 3, 0), QemuRepairs: false, [(0, DiskSize)], ReadableAfterRepair: false,
            Salvage: "Dropped the L2 table of guest offset range [0x0, 0x20000000) (L1 entry 0: table offset 0x40200 not cluster aligned)"),
        new("l2_entry_past_end_of_file", Standard, p => ImagePatch.WriteU64(p, L2EntryAt(p, SecondData), Copied | (ulong)((FileClusters(p) + 10) * ClusterSize)),
            new(2, 1, 0), QemuRepairs: false, [(SecondData, ClusterSize)],
            Salvage: "Dropped the mapping of guest offset 0x100000 (host offset 0x130000 past the end of the file): its data is lost"),
        new("compressed_entry_with_copied", p => Made(p, "", "write -c -P 0x11 0 64k", "write -P 0x22 1M 64k"), p => Set(p, L2EntryAt(p, 0), Copied),
            new(1, 0, 0), QemuRepairs: false, [],
            Salvage: "Cleared the COPIED flag of the compressed cluster at guest offset 0x0"),
        new("refcount_block_past_end_of_file", Standard, p => ImagePatch.WriteU64(p, RefcountTableEntry(p, 1), (ulong)((FileClusters(p) + 20) * ClusterSize)),
            new(1, 0, 0), QemuRepairs: true, []),
        new("snapshot_l1_unaligned", Snapshotted, p =>
        {
            var offset = ImagePatch.ReadHeader(p).Header.SnapshotsOffset;
            ImagePatch.WriteU64(p, offset, ImagePatch.ReadU64(p, offset) + 0x200);
        }, new(1, 6, 0), QemuRepairs: false, [],
            Salvage: "Dropped snapshot 1 (s1): its L1 table offset is not cluster aligned"),
        new("refcount_overflow_at_1_bit", p => Made(p, "refcount_bits=1", StandardWrites), p => CopyEntryToNext(p, SecondData),
            new(1, 0, 0), QemuRepairs: false, [(SecondData + ClusterSize, ClusterSize)],
            Salvage: "Copied the host cluster at 0x70000 to 0x90000 for guest offset 0x110000"),
        new("refcount_table_entry_unaligned", Standard, p => ImagePatch.WriteU64(p, RefcountTableEntry(p, 0), ImagePatch.ReadU64(p, RefcountTableEntry(p, 0)) + 0x200),
            new(1, 0, 9), QemuRepairs: false, [],
            Salvage: "Rebuilding refcount structure around the old one"),
        new("refcount_table_entry_reserved_bits", Standard, p => Set(p, RefcountTableEntry(p, 0), 0x100), new(1, 1, 0), QemuRepairs: false, [],
            Salvage: "Rebuilding refcount structure around the old one"),
        new("data_cluster_in_two_l2_entries_with_refcount_one", Standard, p => CopyEntryToNext(p, SecondData), new(1, 0, 0), QemuRepairs: true,
            [(SecondData + ClusterSize, ClusterSize)]),
        new("snapshot_l2_table_with_wrong_refcount", p =>
        {
            Snapshotted(p);
            Qemu.Io(p, "write -P 0x44 0 64k"); // the active L2 table is copied: the snapshot's keeps refcount 1
        }, p => SetRefcount(p, SnapshotL2Table(p) / ClusterSize, 3), new(0, 1, 0), QemuRepairs: true, []),
        new("preallocated_entry_unaligned", p => Made(p, "", [.. StandardWrites, "write -z 3M 64k"]), p =>
        {
            var end = FileClusters(p);
            ImagePatch.Truncate(p, (end + 1) * ClusterSize);
            SetRefcount(p, end, 1);
            ImagePatch.WriteU64(p, L2EntryAt(p, 3L << 20), Copied | (ulong)((end * ClusterSize) + 0x200) | L2EntryZeroFlag);
        }, new(2, 0, 0), QemuRepairs: true, []),
        new("extended_l2_preallocated_entry_unaligned", p => Made(p, "extended_l2=on", StandardWrites), p =>
        {
            var entry = L2EntryAt(p, SecondData);
            ImagePatch.WriteU64(p, entry, ImagePatch.ReadU64(p, entry) + 0x200);
            ImagePatch.WriteU64(p, entry + 8, 0xffff_0000_0000_0000); // subclusters 0-15 read as zeros, none allocated
        }, new(2, 0, 0), QemuRepairs: true, [(SecondData, ClusterSize)]),
        new("extended_l2_subcluster_allocated_and_zero", p => Made(p, "extended_l2=on", StandardWrites), p => Set(p, L2EntryAt(p, SecondData) + 8, 1UL << 32),
            new(1, 0, 0), QemuRepairs: false, [(SecondData, ClusterSize)], ReadableAfterRepair: false,
            Salvage: "Cleared the zero flags of subclusters that are also allocated (mask 0x1) at guest offset 0x100000"),
        new("dirty_lazy_refcounts", p =>
        {
            Made(p, "lazy_refcounts=on");
            Qemu.IoUnchecked(p, "write -P 0x71 0 256k", "write -P 0x72 3M 64k", "flush", "abort");
        }, _ => { }, new(10, 0, 0), QemuRepairs: true, []),
        new("refcount_block_shared_with_data", Standard, p => ImagePatch.WriteU64(p, RefcountTableEntry(p, 1), (ulong)(DataCluster(p, SecondData) * ClusterSize)),
            new(2, 0, 0), QemuRepairs: true, []),
        new("bitmap_data_cluster_with_refcount_two", WithBitmap, p => SetRefcount(p, BitmapDataCluster(p), 2), new(0, 1, 0), QemuRepairs: true, []),
        new("l2_table_past_end_of_file", Standard, p => ImagePatch.WriteU64(p, L1EntryAt(p), Copied | (ulong)((FileClusters(p) + 4) * ClusterSize)),
            new(2, 5, 0), QemuRepairs: false, [(0, DiskSize)],
            Salvage: "Dropped the L2 table of guest offset range [0x0, 0x20000000) (L1 entry 0: table offset 0xd0000 past the end of the file)"),

        // A file cut short (issue 8): QEMU opens it, reads what is missing as zeros, and counts every
        // structure past the end. Header, refcount table and block, L1, L2, then 16 data clusters.
        new("truncated_before_l1_table", OneMegabyte, p => ImagePatch.Truncate(p, 100_000), new(4, 0, 0), QemuRepairs: false, [(0, DiskSize)],
            Salvage: "Extended the file to 262144 bytes to hold the active L1 table at 0x30000"),
        new("truncated_inside_the_data", OneMegabyte, p => ImagePatch.Truncate(p, 300_000), new(16, 0, 0), QemuRepairs: false, [(0, DiskSize)],
            Salvage: "Dropped the mapping of guest offset 0xf0000 (host offset 0x140000 past the end of the file): its data is lost"),
        new("truncated_inside_the_header_cluster", OneMegabyte, p => ImagePatch.Truncate(p, 1_000), new(3, 0, 0), QemuRepairs: false, [(0, DiskSize)],
            Salvage: "Extended the file to 65536 bytes to hold the header cluster at 0x0"),
    ];

    private const ulong L2EntryZeroFlag = 1;

    private static string[] StandardWrites => ["write -P 0x11 0 128k", "write -P 0x22 1M 64k", "write -P 0x33 2M 64k"];

    private static void Standard(string path) => Made(path, "", StandardWrites);

    private static void OneMegabyte(string path) => Made(path, "", "write -P 0x11 0 1M");

    /// <summary>The standard image plus one internal snapshot: every cluster then has refcount 2.</summary>
    private static void Snapshotted(string path)
    {
        Standard(path);
        Qemu.Img("snapshot", "-c", "s1", path);
    }

    private static void WithBitmap(string path)
    {
        Made(path, "");
        Qemu.Img("bitmap", "--add", path, "b0");
        Qemu.Io(path, StandardWrites);
    }

    private static void Made(string path, string options, params string[] writes)
    {
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536" + (options.Length > 0 ? "," + options : string.Empty), path, DiskSize.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (writes.Length > 0)
        {
            Qemu.Io(path, writes);
        }
    }

    private static long FileClusters(string path) => new FileInfo(path).Length / ClusterSize;

    private static long L1EntryAt(string path) => ImagePatch.ReadHeader(path).Header.L1TableOffset;

    private static long L2Table(string path) => (long)(ImagePatch.ReadU64(path, L1EntryAt(path)) & L1Entry.OffsetMask);

    private static long L2EntryAt(string path, long guestOffset) => ImagePatch.L2EntryOffset(path, guestOffset);

    private static long DataCluster(string path, long guestOffset) => (long)(ImagePatch.ReadU64(path, L2EntryAt(path, guestOffset)) & L2Entry.OffsetMask) / ClusterSize;

    private static long RefcountTableEntry(string path, int index) => ImagePatch.ReadHeader(path).Header.RefcountTableOffset + (index * 8L);

    private static long SnapshotL2Table(string path)
    {
        var snapshotL1 = (long)ImagePatch.ReadU64(path, ImagePatch.ReadHeader(path).Header.SnapshotsOffset);
        return (long)(ImagePatch.ReadU64(path, snapshotL1) & L1Entry.OffsetMask);
    }

    /// <summary>The data cluster of the first entry of the only bitmap's table.</summary>
    private static long BitmapDataCluster(string path)
    {
        var directory = ImagePatch.ReadHeader(path).Bitmaps!.DirectoryOffset;
        var table = (long)ImagePatch.ReadU64(path, directory);
        return (long)(ImagePatch.ReadU64(path, table) & L2Entry.OffsetMask) / ClusterSize;
    }

    /// <summary>Sets a 16-bit refcount in the first refcount block.</summary>
    private static void SetRefcount(string path, long cluster, ushort value)
    {
        var block = (long)ImagePatch.ReadU64(path, RefcountTableEntry(path, 0));
        var bytes = new byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(bytes, value);
        ImagePatch.WriteBytes(path, block + (cluster * 2), bytes);
    }

    /// <summary>Makes the guest cluster after <paramref name="guestOffset"/> map the same host cluster, keeping its refcount.</summary>
    private static void CopyEntryToNext(string path, long guestOffset) =>
        ImagePatch.WriteU64(path, L2EntryAt(path, guestOffset + ClusterSize), ImagePatch.ReadU64(path, L2EntryAt(path, guestOffset)));

    private static void Set(string path, long offset, ulong bits) => ImagePatch.WriteU64(path, offset, ImagePatch.ReadU64(path, offset) | bits);

    private static void Clear(string path, long offset, ulong bits) => ImagePatch.WriteU64(path, offset, ImagePatch.ReadU64(path, offset) & ~bits);
}
