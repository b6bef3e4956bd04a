using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

internal sealed partial class RefcountAllocator
{
    /// <summary>
    /// Replaces the refcount table with a larger one holding at least <paramref name="neededEntries"/>
    /// entries. The new table and the refcount blocks that describe it are placed together beyond
    /// everything the old table covers; those blocks count the table and themselves, so the new
    /// structure is complete before the header switches to it. The old table is freed afterwards.
    /// </summary>
    private async ValueTask GrowTableAsync(long neededEntries, long avoidStart, long avoidCount, bool async, CancellationToken cancellationToken)
    {
        var entriesPerCluster = _geometry.ClusterSize / Qcow2Layout.RefcountTableEntrySize;
        var areaStart = Math.Max(Math.Max(Table.CoveredClusters, _geometry.ClustersFor(_file.Length)), avoidStart + avoidCount);
        var target = Math.Max(neededEntries, Table.Size + Math.Max(1, Table.Size / 2));
        long tableClusters, blockCount, firstBlock;
        while (true)
        {
            (tableClusters, blockCount, firstBlock, target) = PlanArea(areaStart, target, entriesPerCluster);
            if (_reservations.FirstOverlapEnd(areaStart, tableClusters + blockCount) is long after)
            {
                areaStart = after;
                continue;
            }

            break;
        }

        if (tableClusters * _geometry.ClusterSize > Qcow2Layout.MaxRefcountTableBytes)
        {
            throw new InvalidOperationException($"The image is too large: its refcount table would exceed QEMU's {Qcow2Layout.MaxRefcountTableBytes >> 20} MiB limit.");
        }

        var areaEnd = areaStart + tableClusters + blockCount;
        var entries = new ulong[tableClusters * entriesPerCluster];
        Table.ToArray().CopyTo(entries, 0);
        for (var k = 0L; k < blockCount; k++)
        {
            var blockOffset = (areaStart + tableClusters + k) << _geometry.ClusterBits;
            entries[firstBlock + k] = (ulong)blockOffset;
            var block = new byte[_geometry.ClusterSize];
            var blockFirstCluster = (firstBlock + k) << _geometry.RefcountBlockBits;
            var from = Math.Max(areaStart, blockFirstCluster);
            var to = Math.Min(areaEnd, blockFirstCluster + _geometry.RefcountBlockEntries);
            for (var cluster = from; cluster < to; cluster++)
            {
                RefcountBlock.Set(block, (int)(cluster - blockFirstCluster), _geometry.RefcountOrder, 1);
            }

            _blocks.Forget(blockOffset);
            await _file.WriteAsync(blockOffset, block, async, cancellationToken).ConfigureAwait(false);
        }

        var oldOffset = Table.Offset;
        var oldClusters = Table.Clusters;
        var newOffset = areaStart << _geometry.ClusterBits;
        var replacement = new RefcountTable(_geometry, _blocks, newOffset, (int)tableClusters, entries);
        await _file.WriteAsync(newOffset, replacement.Encode(), async, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await _commitTableLocation(newOffset, (int)tableClusters, async, cancellationToken).ConfigureAwait(false);
        Table.Replace(newOffset, (int)tableClusters, entries);

        for (var i = 0L; i < oldClusters; i++)
        {
            await ChangeAsync((oldOffset >> _geometry.ClusterBits) + i, -1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sizes the table and its describing blocks for an area starting at <paramref name="areaStart"/>:
    /// the blocks must cover the area, and the table must hold the blocks' entries — a fixed point.
    /// </summary>
    private (long TableClusters, long BlockCount, long FirstBlock, long Target) PlanArea(long areaStart, long target, long entriesPerCluster)
    {
        var tableClusters = (target + entriesPerCluster - 1) / entriesPerCluster;
        var blockCount = 0L;
        var firstBlock = areaStart >> _geometry.RefcountBlockBits;
        while (true)
        {
            var lastBlock = (areaStart + tableClusters + blockCount - 1) >> _geometry.RefcountBlockBits;
            var neededBlocks = lastBlock - firstBlock + 1;
            var neededTarget = Math.Max(target, lastBlock + 1);
            var neededClusters = (neededTarget + entriesPerCluster - 1) / entriesPerCluster;
            if (neededBlocks == blockCount && neededClusters == tableClusters)
            {
                return (tableClusters, blockCount, firstBlock, neededTarget);
            }

            blockCount = neededBlocks;
            tableClusters = Math.Max(tableClusters, neededClusters);
            target = neededTarget;
        }
    }

    /// <summary>
    /// Makes sure refcount blocks exist for clusters [start, start + count). Returns true when it
    /// had to allocate metadata (the caller then searches for free space again).
    /// </summary>
    private async ValueTask<bool> EnsureBlocksAsync(long start, long count, bool async, CancellationToken cancellationToken)
    {
        var firstBlock = start >> _geometry.RefcountBlockBits;
        var lastBlock = (start + count - 1) >> _geometry.RefcountBlockBits;
        for (var blockIndex = firstBlock; blockIndex <= lastBlock; blockIndex++)
        {
            if (blockIndex >= Table.Size)
            {
                await GrowTableAsync(lastBlock + 1, start, count, async, cancellationToken).ConfigureAwait(false);
                return true;
            }

            if (Table[blockIndex].BlockOffset == 0)
            {
                await AllocateBlockAsync(blockIndex, start, count, async, cancellationToken).ConfigureAwait(false);
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Allocates the refcount block with table index <paramref name="blockIndex"/>, inside the range
    /// it describes when possible so that it counts itself (as QEMU places them).
    /// </summary>
    private async ValueTask AllocateBlockAsync(long blockIndex, long avoidStart, long avoidCount, bool async, CancellationToken cancellationToken)
    {
        var rangeStart = blockIndex << _geometry.RefcountBlockBits;
        var rangeEnd = rangeStart + _geometry.RefcountBlockEntries;
        var cluster = rangeStart;
        while (cluster < rangeEnd)
        {
            if (cluster >= avoidStart && cluster < avoidStart + avoidCount)
            {
                cluster = avoidStart + avoidCount;
            }
            else if (_reservations.FirstOverlapEnd(cluster, 1) is long after)
            {
                cluster = after;
            }
            else if (_metadata.Published?.FirstOverlapEnd(cluster, 1) is long metadataEnd)
            {
                cluster = metadataEnd;
            }
            else
            {
                break;
            }
        }

        long offset;
        if (cluster < rangeEnd)
        {
            offset = cluster << _geometry.ClusterBits;
            _onAllocated(offset + _geometry.ClusterSize);
            using var block = await _blocks.CreateAsync(offset, async, cancellationToken).ConfigureAwait(false);
            RefcountBlock.Set(block.Span, (int)(cluster - rangeStart), _geometry.RefcountOrder, 1);
        }
        else
        {
            // Every cluster of the range is reserved or wanted: store the block elsewhere. That
            // allocation may itself land in this range (free, since no block counts it) and so
            // create this very block, counting the cluster it got: the block exists then, and the
            // cluster goes back. Creating a second one would replace the table entry of the first
            // and lose the refcounts it holds.
            offset = await AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);
            if (Table[blockIndex].BlockOffset != 0)
            {
                await ChangeAsync(offset >> _geometry.ClusterBits, -1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
                return;
            }

            using var block = await _blocks.CreateAsync(offset, async, cancellationToken).ConfigureAwait(false);
        }

        // The block must be on disk before the table points at it.
        await _blocks.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        Table.SetInMemory(blockIndex, offset);
        _unwrittenTableEntries.Add(blockIndex);
        await WriteTableEntriesAsync(async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the refcount table entries of new blocks. The block stays in use in memory when its
    /// entry's write fails (it already counts allocated clusters); the entry is written again at
    /// the next flush, and until then the session's dirty bit covers the gap.
    /// </summary>
    public async ValueTask WriteTableEntriesAsync(bool async, CancellationToken cancellationToken)
    {
        if (_unwrittenTableEntries.Count == 0)
        {
            return;
        }

        var entry = new byte[Qcow2Layout.RefcountTableEntrySize];
        foreach (var blockIndex in _unwrittenTableEntries.ToList())
        {
            BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)Table[blockIndex].BlockOffset);
            await _file.WriteAsync(Table.Offset + (blockIndex * Qcow2Layout.RefcountTableEntrySize), entry, async, cancellationToken).ConfigureAwait(false);
        }

        await _file.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _unwrittenTableEntries.Clear();
    }
}
