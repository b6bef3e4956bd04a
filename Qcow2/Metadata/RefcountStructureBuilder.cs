using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Writes a complete refcount structure — table and blocks — for known per-cluster refcounts into
/// fresh space at the end of the file, counting its own clusters. Used where the existing structure
/// cannot be trusted or has the wrong entry width (refcount rebuild, refcount_bits amend); the
/// header is switched to it by the caller.
/// </summary>
internal static class RefcountStructureBuilder
{
    /// <summary>Where the new structure went.</summary>
    /// <param name="TableOffset">Host offset of the new refcount table.</param>
    /// <param name="TableClusters">Clusters of the table.</param>
    /// <param name="Entries">The table's entries (block offsets).</param>
    /// <param name="EndCluster">First cluster after the new structure.</param>
    public readonly record struct Placement(long TableOffset, int TableClusters, ulong[] Entries, long EndCluster);

    /// <summary>
    /// Writes the structure for <paramref name="references"/> (refcount per cluster index) with
    /// entries of 2^<paramref name="refcountOrder"/> bits, starting at cluster <paramref name="areaStart"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">A refcount does not fit the width, or the table would exceed QEMU's limit.</exception>
    public static async ValueTask<Placement> WriteAsync(IStorage file, int clusterBits, int refcountOrder, IReadOnlyList<ulong> references, long areaStart, bool async, CancellationToken cancellationToken)
    {
        var clusterSize = 1 << clusterBits;
        var blockBits = clusterBits + 3 - refcountOrder;
        var blockEntries = 1 << blockBits;
        var maxRefcount = RefcountBlock.MaxRefcount(refcountOrder);
        var entriesPerTableCluster = clusterSize / Qcow2Layout.RefcountTableEntrySize;
        var (tableClusters, blocks) = LayOut(BlocksInUse(references, blockBits, refcountOrder, clusterBits), areaStart, blockBits, entriesPerTableCluster);
        if (tableClusters * clusterSize > Qcow2Layout.MaxRefcountTableBytes)
        {
            throw new InvalidOperationException($"The refcount table would exceed QEMU's {Qcow2Layout.MaxRefcountTableBytes >> 20} MiB limit.");
        }

        var blockCount = blocks.Count;
        var areaEnd = areaStart + tableClusters + blockCount;
        var entries = new ulong[tableClusters * entriesPerTableCluster];
        var next = areaStart + tableClusters;
        var block = new byte[clusterSize];
        foreach (var blockIndex in blocks)
        {
            var blockOffset = next++ << clusterBits;
            entries[blockIndex] = (ulong)blockOffset;
            Array.Clear(block);
            var first = blockIndex << blockBits;
            for (var i = 0; i < blockEntries; i++)
            {
                var cluster = first + i;
                var value = cluster < references.Count ? references[(int)cluster] : 0;
                if (cluster >= areaStart && cluster < areaEnd)
                {
                    value++;
                }

                if (value != 0)
                {
                    RefcountBlock.Set(block, i, refcountOrder, Math.Min(value, maxRefcount));
                }
            }

            await file.WriteAsync(blockOffset, block, async, cancellationToken).ConfigureAwait(false);
        }

        var table = new byte[tableClusters * clusterSize];
        for (var i = 0; i < entries.Length; i++)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(i * Qcow2Layout.RefcountTableEntrySize), entries[i]);
        }

        var tableOffset = areaStart << clusterBits;
        await file.WriteAsync(tableOffset, table, async, cancellationToken).ConfigureAwait(false);
        await file.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        return new Placement(tableOffset, (int)tableClusters, entries, areaEnd);
    }

    /// <summary>The refcount blocks the counted clusters need, refusing a refcount the width cannot hold.</summary>
    private static SortedSet<long> BlocksInUse(IReadOnlyList<ulong> references, int blockBits, int refcountOrder, int clusterBits)
    {
        var maxRefcount = RefcountBlock.MaxRefcount(refcountOrder);
        var blocks = new SortedSet<long>();
        for (long cluster = 0; cluster < references.Count; cluster++)
        {
            if (references[(int)cluster] == 0)
            {
                continue;
            }

            if (references[(int)cluster] > maxRefcount)
            {
                throw new InvalidOperationException($"Cannot decrease refcount entry width to {1 << refcountOrder} bits: Cluster at offset 0x{cluster << clusterBits:x} has a refcount of {references[(int)cluster]}");
            }

            blocks.Add(cluster >> blockBits);
        }

        return blocks;
    }

    /// <summary>
    /// The table and blocks live in [areaStart, areaStart + table + blocks) and count themselves:
    /// the estimate grows until the blocks needed to describe the area are all in it.
    /// </summary>
    private static (long TableClusters, SortedSet<long> Blocks) LayOut(SortedSet<long> dataBlocks, long areaStart, int blockBits, int entriesPerTableCluster)
    {
        long tableClusters = 1, blockCount = 0;
        while (true)
        {
            var blocks = new SortedSet<long>(dataBlocks);
            for (var b = areaStart >> blockBits; b <= (areaStart + tableClusters + blockCount - 1) >> blockBits; b++)
            {
                blocks.Add(b);
            }

            var neededTable = (blocks.Max + 1 + entriesPerTableCluster - 1) / entriesPerTableCluster;
            if (blocks.Count == blockCount && neededTable <= tableClusters)
            {
                return (tableClusters, blocks);
            }

            blockCount = blocks.Count;
            tableClusters = Math.Max(tableClusters, neededTable);
        }
    }
}
