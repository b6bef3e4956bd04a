using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// QEMU's rebuild_refcount_structure: writes a complete new refcount structure from the computed
/// references. Refcount blocks and the table are allocated first-fit in the in-memory refcount
/// table (skipping clusters an extension reserved), so they land where QEMU would put them and
/// image-end-offset comes out the same. The old structure is left behind, counted by nothing, and
/// freed as leaks by the check that follows. Writes QEMU's overlap check would refuse (a cluster
/// the old table still names) fail the check as in QEMU — unless <paramref name="avoidOldBlocks"/>
/// says to place the new blocks around every cluster the old table names (repairs past qemu-img's).
/// </summary>
internal sealed class RefcountRebuilder(ImageMetadata metadata, RefcountAllocator? allocator, CheckReport report, CorruptionSignal signal, bool avoidOldBlocks = false)
{
    private readonly Geometry _geometry = metadata.Geometry;
    private readonly RepairWriter _repairs = new(metadata);
    private HashSet<long>? _oldBlocks;

    /// <summary>Host clusters (as offsets) of the refcount blocks the old table names (left in place until the new structure is live).</summary>
    private HashSet<long> OldBlocks => _oldBlocks ??= OldBlockOffsets(metadata.Refcounts ?? throw new InvalidOperationException("The refcount table is read before the check starts."));
    private uint[] _references = [];
    private long _count;
    private ulong[] _table = [];

    /// <summary>Writes the new structure and switches the header, the table and the allocator to it.</summary>
    /// <exception cref="CheckAbortedException">A write was refused; the old structure is still in place.</exception>
    public async ValueTask RebuildAsync(uint[] references, bool async, CancellationToken cancellationToken)
    {
        _references = (uint[])references.Clone();
        _count = references.Length;
        await _repairs.ForgetRefcountBlocksAsync(async, cancellationToken).ConfigureAwait(false);

        await WriteBlocksAsync(0, _count, async, cancellationToken).ConfigureAwait(false);
        long tableOffset, tableClusters;
        bool grown;
        do
        {
            // Placing the table changes refcounts, which may need another block, which may need a bigger table.
            tableClusters = _geometry.ClustersFor((long)_table.Length * Qcow2Layout.RefcountTableEntrySize);
            long firstFree = 0;
            tableOffset = Allocate(tableClusters, ref firstFree);
            var first = tableOffset >> _geometry.ClusterBits;
            grown = await WriteBlocksAsync(first, first + tableClusters, async, cancellationToken).ConfigureAwait(false);
        }
        while (grown);

        if (tableClusters * _geometry.ClusterSize > Qcow2Layout.MaxRefcountTableBytes)
        {
            report.CheckErrors++;
            throw report.Abort($"ERROR allocating reftable: {tableClusters} clusters exceed QEMU's {Qcow2Layout.MaxRefcountTableBytes >> 20} MiB limit", "File too large");
        }

        var encoded = RefcountTable.Encode(_table, (int)tableClusters, _geometry);
        await WriteOrRefuseAsync(tableOffset, encoded, "reftable", countsAsCheckError: false, async, cancellationToken).ConfigureAwait(false);
        await _repairs.SwitchRefcountTableAsync(tableOffset, (int)tableClusters, _table, _count << _geometry.ClusterBits, allocator, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// rebuild_refcounts_write_refblocks: writes the block of every range in [first, end) holding a
    /// non-zero reference, allocating blocks not yet placed. Returns whether the table had to grow.
    /// </summary>
    private async ValueTask<bool> WriteBlocksAsync(long first, long end, bool async, CancellationToken cancellationToken)
    {
        var blockBits = _geometry.RefcountBlockBits;
        long firstFree = 0;
        var grown = false;
        var block = new byte[_geometry.ClusterSize];
        for (var cluster = first; cluster < end; cluster++)
        {
            if (_references[cluster] == 0)
            {
                continue;
            }

            var blockIndex = cluster >> blockBits;
            var blockStart = blockIndex << blockBits;
            long blockOffset;
            if (blockIndex < _table.Length && _table[blockIndex] != 0)
            {
                blockOffset = (long)_table[blockIndex];
            }
            else
            {
                firstFree = Math.Max(firstFree, blockStart); // never inside a block already written
                blockOffset = Allocate(1, ref firstFree);
                end = Math.Max(end, (blockOffset >> _geometry.ClusterBits) + 1); // that block must count the new one
                if (blockIndex >= _table.Length)
                {
                    var entriesPerCluster = _geometry.ClusterSize / Qcow2Layout.RefcountTableEntrySize;
                    Array.Resize(ref _table, (int)((blockIndex / entriesPerCluster) + 1) * entriesPerCluster);
                    grown = true;
                }

                _table[blockIndex] = (ulong)blockOffset;
            }

            Array.Clear(block);
            for (var i = 0; i < _geometry.RefcountBlockEntries && blockStart + i < _count; i++)
            {
                if (_references[blockStart + i] is var value and not 0)
                {
                    RefcountBlock.Set(block, i, _geometry.RefcountOrder, value);
                }
            }

            await WriteOrRefuseAsync(blockOffset, block, "refblock", countsAsCheckError: true, async, cancellationToken).ConfigureAwait(false);
            cluster = blockStart + _geometry.RefcountBlockEntries - 1;
        }

        return grown;
    }

    /// <summary>
    /// alloc_clusters_imrt: the first run of <paramref name="count"/> clusters at or after
    /// <paramref name="firstFree"/> that nothing references and no extension reserved, growing the
    /// in-memory table past the end when none is free; marks them used (refcount 1).
    /// </summary>
    private long Allocate(long count, ref long firstFree)
    {
        var cluster = firstFree;
        long contiguous = 0;
        var firstGap = true;
        for (; cluster < _count && contiguous < count; cluster++)
        {
            if (_references[cluster] == 0 && !metadata.Reservations.Overlaps(cluster, 1) && !(avoidOldBlocks && OldBlocks.Contains(cluster << _geometry.ClusterBits)))
            {
                contiguous++;
                if (firstGap)
                {
                    firstFree = cluster;
                    firstGap = false;
                }
            }
            else
            {
                contiguous = 0;
            }
        }

        if (contiguous < count)
        {
            // Past the end nothing is referenced, but an extension may still have reserved space there.
            var start = cluster - contiguous;
            while (metadata.Reservations.FirstOverlapEnd(start, count) is { } after)
            {
                start = after;
            }

            cluster = start + count;
            contiguous = count;
            Grow(cluster);
        }

        cluster -= contiguous;
        for (var i = 0; i < count; i++)
        {
            _references[cluster + i] = 1;
        }

        return cluster << _geometry.ClusterBits;
    }

    private void Grow(long clusters)
    {
        if (clusters > _count)
        {
            if (clusters > _references.Length)
            {
                Array.Resize(ref _references, (int)Math.Max(clusters, Math.Min((long)_references.Length * 2, Array.MaxLength)));
            }

            _count = clusters;
        }
    }

    /// <summary>Writes a new block or table, unless it would land on live metadata: that fails the check, as in QEMU.</summary>
    private async ValueTask WriteOrRefuseAsync(long offset, byte[] bytes, string what, bool countsAsCheckError, bool async, CancellationToken cancellationToken)
    {
        if (await _repairs.RewriteAsync(offset, bytes, MetadataKind.None, async, cancellationToken).ConfigureAwait(false) is { } overlapped)
        {
            await signal.RaiseAsync($"Preventing invalid write on metadata (overlaps with {overlapped})", async, cancellationToken).ConfigureAwait(false);
            if (countsAsCheckError)
            {
                report.CheckErrors++;
            }

            throw report.Abort($"ERROR writing {what}: {CheckAbortedException.InputOutputError}");
        }
    }

    /// <summary>The clusters the old table's blocks occupy: an unaligned entry touches two.</summary>
    private HashSet<long> OldBlockOffsets(RefcountTable table)
    {
        var clusters = new HashSet<long>();
        for (var index = 0; index < table.Size; index++)
        {
            if (table[index].BlockOffset is var offset and > 0)
            {
                var first = _geometry.StartOfCluster(offset);
                clusters.Add(first);
                if (first != offset)
                {
                    clusters.Add(first + _geometry.ClusterSize);
                }
            }
        }

        return clusters;
    }
}
