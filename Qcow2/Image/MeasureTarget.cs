using System.Numerics;
using System.Text;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Image;

/// <summary>The target of a measurement: the create options qemu-img measure honours, validated in its order.</summary>
internal sealed record MeasureTarget(int ClusterSize, int Version, int RefcountOrder, bool ExtendedL2, Preallocation Preallocation, bool HasBackingFile)
{
    private int L2EntrySize => ExtendedL2 ? Qcow2Layout.ExtendedL2EntrySize : Qcow2Layout.L2EntrySize;

    public static MeasureTarget From(Qcow2CreateOptions options)
    {
        static ArgumentException Bad(string message) => new(message, nameof(options));
        var cluster = options.ClusterSize;
        if (!BitOperations.IsPow2(cluster) || cluster < Qcow2Layout.ClusterSize(Qcow2Layout.MinClusterBits) || cluster > Qcow2Layout.ClusterSize(Qcow2Layout.MaxClusterBits))
        {
            throw Bad($"Cluster size {cluster} is not a power of two between 512 and 2048k.");
        }

        if (options.ExtendedL2 && cluster < Qcow2Layout.ClusterSize(Qcow2Layout.MinExtendedL2ClusterBits))
        {
            throw Bad($"Extended L2 entries are only supported with cluster sizes of at least {Qcow2Layout.ClusterSize(Qcow2Layout.MinExtendedL2ClusterBits)} bytes.");
        }

        if (options.Version is not (2 or 3))
        {
            throw Bad($"qcow2 version {options.Version} does not exist; use 2 (compat=0.10) or 3 (compat=1.1).");
        }

        if (!BitOperations.IsPow2(options.RefcountBits) || options.RefcountBits > 64)
        {
            throw Bad($"Refcount width {options.RefcountBits} is not a power of two up to 64 bits.");
        }

        if (options.Version == 2 && options.RefcountBits != 1 << Qcow2Layout.V2RefcountOrder)
        {
            throw Bad("Refcount widths other than 16 bits require compat=1.1.");
        }

        var target = new MeasureTarget(cluster, options.Version, BitOperations.Log2((uint)options.RefcountBits), options.ExtendedL2, options.Preallocation, options.BackingFile is not null);
        if (options.Size is long size)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(size, nameof(options));
            // qemu-img checks the L1 limit against the size option even when a source decides the size.
            if (Qcow2Header.RequiredL1Entries(size, BitOperations.Log2((uint)cluster), options.ExtendedL2) * Qcow2Layout.L1EntrySize > Qcow2Layout.MaxL1TableBytes)
            {
                throw Bad("The image size is too large (try using a larger cluster size).");
            }
        }

        return target;
    }

    public long RoundUp(long bytes)
    {
        if (bytes > long.MaxValue - ClusterSize)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "The size does not fit a qcow2 image.");
        }

        return (bytes + ClusterSize - 1) / ClusterSize * ClusterSize;
    }

    /// <summary>
    /// Bytes of the target clusters that hold at least one source byte reported as data and not
    /// as zeros — what a copy allocates, judged by allocation status alone as qemu-img does.
    /// </summary>
    public long DataClusterBytes(long size, IEnumerable<MapEntry> map)
    {
        long counted = 0;
        long countedEnd = 0; // clusters below this are already counted
        foreach (var entry in map)
        {
            if (entry.Zero || !entry.Data)
            {
                continue;
            }

            var start = Math.Max(entry.Start, countedEnd);
            var end = Math.Min(entry.End, size);
            if (start >= end)
            {
                continue;
            }

            var first = start / ClusterSize;
            var last = (end - 1) / ClusterSize;
            counted = checked(counted + ((last - first + 1) * ClusterSize));
            countedEnd = (last + 1) * ClusterSize;
        }

        return counted;
    }

    /// <summary>
    /// Space for copies of <paramref name="bitmaps"/>: every bitmap fully allocated in this
    /// target's clusters, its bitmap table, and the directory entries, each rounded to clusters.
    /// </summary>
    public long BitmapBytes(IReadOnlyList<BitmapDirectoryEntry> bitmaps, long guestSize)
    {
        long total = 0;
        long directory = 0;
        foreach (var bitmap in bitmaps)
        {
            var bits = (guestSize / bitmap.Granularity) + (guestSize % bitmap.Granularity == 0 ? 0 : 1);
            var bytes = (bits + 7) / 8;
            var clusters = (bytes + ClusterSize - 1) / ClusterSize;
            total = checked(total + (clusters * ClusterSize) + RoundUp(clusters * sizeof(ulong)));
            directory += (BitmapDirectoryEntry.FixedSize + Encoding.UTF8.GetByteCount(bitmap.Name) + 7) & ~7L;
        }

        return checked(total + RoundUp(directory));
    }

    public Qcow2Measurement Result(long virtualSize, long dataBytes, bool hasSource, long? bitmaps)
    {
        // A backing file may share nothing with the source, so a copy must write every cluster.
        var required = hasSource && HasBackingFile ? virtualSize : dataBytes;
        if (Preallocation is Preallocation.Full or Preallocation.Falloc)
        {
            required = virtualSize;
        }

        var fullyAllocated = FullyAllocatedBytes(virtualSize);
        return new Qcow2Measurement(fullyAllocated - virtualSize + required, fullyAllocated, bitmaps);
    }

    /// <summary>Header, every L2 table, the L1 table and the refcount structures counting them all, plus the data.</summary>
    private long FullyAllocatedBytes(long virtualSize)
    {
        checked
        {
            long entriesPerCluster = ClusterSize / L2EntrySize;
            var l2Entries = RoundUpTo(virtualSize / ClusterSize, entriesPerCluster);
            var l1Entries = RoundUpTo(l2Entries * L2EntrySize / ClusterSize, ClusterSize / Qcow2Layout.L1EntrySize);
            var metadata = ClusterSize + (l2Entries * L2EntrySize) + (l1Entries * Qcow2Layout.L1EntrySize);
            metadata += RefcountMetadataBytes((metadata + virtualSize) / ClusterSize);
            return metadata + virtualSize;
        }
    }

    /// <summary>
    /// Refcount blocks and table clusters that count <paramref name="clusters"/> clusters and
    /// themselves: grown until adding them needs no further block or table cluster.
    /// </summary>
    private long RefcountMetadataBytes(long clusters)
    {
        long refcountsPerBlock = ClusterSize * 8L >> RefcountOrder;
        long blocksPerTableCluster = ClusterSize / Qcow2Layout.RefcountTableEntrySize;
        long blocks = 0, table = 0, total = 0, previous;
        do
        {
            previous = total;
            blocks = DivideRoundingUp(clusters + table + blocks, refcountsPerBlock);
            table = DivideRoundingUp(blocks, blocksPerTableCluster);
            total = clusters + blocks + table;
        }
        while (total != previous);

        return checked((blocks + table) * ClusterSize);
    }

    private static long RoundUpTo(long value, long multiple) => DivideRoundingUp(value, multiple) * multiple;

    private static long DivideRoundingUp(long value, long divisor) => (value / divisor) + (value % divisor == 0 ? 0 : 1);
}
