using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>What a cluster whose refcount changes holds (decides what happens when it is freed).</summary>
internal enum ClusterUse
{
    /// <summary>A guest data cluster (standard L2 entry).</summary>
    Data,

    /// <summary>Part of a compressed cluster's byte range.</summary>
    Compressed,

    /// <summary>An L2 table.</summary>
    L2Table,

    /// <summary>Other metadata: L1 tables, refcount structures, snapshot table, bitmaps.</summary>
    Metadata,
}

/// <summary>
/// Refcounts and cluster allocation (QEMU's qcow2-refcount.c): reading and changing refcounts,
/// finding free clusters (freed space is reused first), allocating refcount blocks and growing
/// the refcount table, byte-granular allocation for compressed clusters. Callers hold the
/// metadata lock. An L2 entry always reaches the disk before the refcount that frees its cluster:
/// the last reference of a data cluster is dropped from the blocks only by the flush, after the L2
/// tables (<see cref="ApplyDeferredFreesAsync"/>); other decrements make the refcount cache depend
/// on the L2 cache. Until then the cluster reads as free here and stays quarantined.
/// </summary>
internal sealed partial class RefcountAllocator
{
    private readonly IStorage _file;
    private readonly Geometry _geometry;
    private readonly TableCache _blocks;
    private readonly TableCache _l2Cache;
    private readonly HostReservations _reservations;
    private readonly MetadataOverlapTracker _metadata;
    private readonly Func<long, int, bool, CancellationToken, ValueTask> _commitTableLocation;
    private readonly Action<long, ClusterUse> _onFreed;
    private readonly Action<long> _onAllocated;
    private readonly HashSet<long> _quarantined = [];
    private readonly Dictionary<long, ulong> _deferredFrees = [];
    private readonly SortedSet<long> _unwrittenTableEntries = [];
    private long _freeClusterHint;
    private long _freeByteOffset;

    /// <param name="file">The image file.</param>
    /// <param name="geometry">Index arithmetic.</param>
    /// <param name="table">The loaded refcount table.</param>
    /// <param name="blocks">The refcount block cache.</param>
    /// <param name="l2Cache">The L2 cache (decrements are ordered after it).</param>
    /// <param name="reservations">Ranges never to allocate.</param>
    /// <param name="metadata">Where the image's metadata lies: never allocated either, even with a refcount of 0 (a damaged or hostile image).</param>
    /// <param name="commitTableLocation">Writes a new refcount table offset and size into the header, durably.</param>
    /// <param name="onFreed">Told about every cluster whose refcount reaches zero.</param>
    /// <param name="onAllocated">Told the end offset of every allocation (the clusters exist from now on, written or not).</param>
    public RefcountAllocator(IStorage file, Geometry geometry, RefcountTable table, TableCache blocks, TableCache l2Cache, HostReservations reservations, MetadataOverlapTracker metadata,
        Func<long, int, bool, CancellationToken, ValueTask> commitTableLocation, Action<long, ClusterUse> onFreed, Action<long> onAllocated)
    {
        _onAllocated = onAllocated;
        _file = file;
        _geometry = geometry;
        Table = table;
        _blocks = blocks;
        _l2Cache = l2Cache;
        _reservations = reservations;
        _metadata = metadata;
        _commitTableLocation = commitTableLocation;
        _onFreed = onFreed;
    }

    public RefcountTable Table { get; }

    /// <summary>Called once before the first refcount change since it was armed (the image sets the dirty bit here).</summary>
    public Func<bool, CancellationToken, ValueTask>? BeforeFirstChange { get; set; }

    /// <summary>The refcount of host cluster <paramref name="cluster"/> (net of deferred frees).</summary>
    public ValueTask<ulong> GetAsync(long cluster, bool async, CancellationToken cancellationToken) =>
        _deferredFrees.Count == 0 ? Table.GetAsync(cluster, long.MaxValue, async, cancellationToken) : GetNetAsync(cluster, async, cancellationToken);

    private async ValueTask<ulong> GetNetAsync(long cluster, bool async, CancellationToken cancellationToken) =>
        await Table.GetAsync(cluster, long.MaxValue, async, cancellationToken).ConfigureAwait(false) - _deferredFrees.GetValueOrDefault(cluster);

    /// <summary>Data clusters freed since the last flush whose refcount blocks still count them.</summary>
    public int DeferredFrees => _deferredFrees.Count;

    /// <summary>Allocates <paramref name="count"/> contiguous clusters with refcount 1 and returns the host offset of the first.</summary>
    public async ValueTask<long> AllocateClustersAsync(int count, bool async, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        while (true)
        {
            var start = await FindFreeRunAsync(count, async, cancellationToken).ConfigureAwait(false);
            if (await EnsureBlocksAsync(start, count, async, cancellationToken).ConfigureAwait(false))
            {
                continue; // refcount metadata was allocated, possibly inside the run: search again
            }

            for (var i = 0; i < count; i++)
            {
                await ChangeAsync(start + i, +1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
            }

            if (start <= _freeClusterHint)
            {
                _freeClusterHint = start + count;
            }

            _onAllocated((start + count) << _geometry.ClusterBits);
            return start << _geometry.ClusterBits;
        }
    }

    /// <summary>
    /// Allocates <paramref name="length"/> bytes for compressed data, packed after the previous
    /// allocation when it fits in the same cluster (QEMU's qcow2_alloc_bytes). The cluster's refcount
    /// counts every compressed cluster stored in it.
    /// </summary>
    public async ValueTask<long> AllocateBytesAsync(int length, bool async, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(length, _geometry.ClusterSize);
        if (_freeByteOffset != 0)
        {
            var cluster = _freeByteOffset >> _geometry.ClusterBits;
            var free = _geometry.ClusterSize - _geometry.OffsetInCluster(_freeByteOffset);
            if (free < length || await GetAsync(cluster, async, cancellationToken).ConfigureAwait(false) >= _geometry.MaxRefcount)
            {
                _freeByteOffset = 0;
            }
        }

        long offset;
        if (_freeByteOffset == 0)
        {
            offset = await AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            offset = _freeByteOffset;
            await ChangeAsync(offset >> _geometry.ClusterBits, +1, ClusterUse.Compressed, async, cancellationToken).ConfigureAwait(false);
        }

        _freeByteOffset = _geometry.IsClusterAligned(offset + length) ? 0 : offset + length;
        return offset;
    }

    /// <summary>
    /// Runs <see cref="BeforeFirstChange"/> (sets the dirty bit) if it is armed: before a refcount
    /// change, or before a metadata write that leaks clusters if a crash follows it.
    /// </summary>
    public async ValueTask BeforeChangeAsync(bool async, CancellationToken cancellationToken)
    {
        if (BeforeFirstChange is { } hook)
        {
            await hook(async, cancellationToken).ConfigureAwait(false);
            BeforeFirstChange = null; // only once it succeeded: after an I/O error the next change tries again
        }
    }

    /// <summary>
    /// Adds <paramref name="delta"/> to a cluster's refcount and returns the new value. A refcount
    /// block is allocated if an increment needs one; reaching zero frees the cluster.
    /// </summary>
    /// <exception cref="InvalidOperationException">The refcount would exceed the width's maximum.</exception>
    /// <exception cref="InvalidDataException">A decrement below zero (the refcounts are corrupt).</exception>
    public async ValueTask<ulong> ChangeAsync(long cluster, long delta, ClusterUse use, bool async, CancellationToken cancellationToken)
    {
        await BeforeChangeAsync(async, cancellationToken).ConfigureAwait(false);

        var blockOffset = Table.BlockOffsetFor(cluster, long.MaxValue);
        if (blockOffset == 0)
        {
            if (delta < 0)
            {
                throw Qcow2Corruption.Create("refcount table", $"cluster {cluster} is in use but has no refcount block", Table.Offset);
            }

            await EnsureBlocksAsync(cluster, 1, async, cancellationToken).ConfigureAwait(false);
            blockOffset = Table.BlockOffsetFor(cluster, long.MaxValue);
        }

        ulong updated;
        using (var block = await _blocks.GetAsync(blockOffset, async, cancellationToken).ConfigureAwait(false))
        {
            var index = (int)(cluster & (_geometry.RefcountBlockEntries - 1));
            var deferred = _deferredFrees.GetValueOrDefault(cluster);
            var current = RefcountBlock.Get(block.Span, index, _geometry.RefcountOrder) - deferred;
            if (delta < 0 && current < (ulong)-delta)
            {
                throw Qcow2Corruption.Create("refcount block", $"the refcount of cluster {cluster} is {current} and cannot drop by {-delta}", blockOffset);
            }

            updated = delta < 0 ? current - (ulong)-delta : current + (ulong)delta;
            if (delta > 0 && (updated > _geometry.MaxRefcount || updated < current))
            {
                throw new InvalidOperationException($"The refcount of cluster {cluster} would exceed the {1 << _geometry.RefcountOrder}-bit maximum {_geometry.MaxRefcount}.");
            }

            if (updated == 0 && use == ClusterUse.Data)
            {
                // A data cluster's last reference: the block keeps counting it until the flush has
                // made the L2 entry that dropped it durable (ApplyDeferredFreesAsync). Decrementing
                // now would order the refcount cache after the L2 cache, and the next increment the
                // other way round: an fsync per cluster for a stream of out-of-place rewrites.
                _deferredFrees[cluster] = deferred + (ulong)-delta;
            }
            else
            {
                if (delta < 0)
                {
                    await _blocks.SetDependencyAsync(_l2Cache, async, cancellationToken).ConfigureAwait(false);
                }

                RefcountBlock.Set(block.Span, index, _geometry.RefcountOrder, updated + deferred);
                TableCache.MarkDirty(block);
            }
        }

        if (updated == 0)
        {
            // Not reusable before the next flush: until the L2 entry that unmapped it is durable, a
            // crash could bring that entry back pointing at whatever the cluster was reused for.
            _quarantined.Add(cluster);
            _onFreed(cluster, use);
        }

        return updated;
    }

    /// <summary>
    /// Adds <paramref name="delta"/> to every cluster a compressed cluster's sectors touch (QEMU
    /// counts each of them once per compressed cluster stored in it).
    /// </summary>
    public async ValueTask ChangeCompressedAsync(CompressedClusterDescriptor descriptor, long delta, bool async, CancellationToken cancellationToken)
    {
        var start = descriptor.HostOffset & ~(long)(Qcow2Layout.SectorSize - 1);
        var last = (start + ((long)descriptor.SectorCount * Qcow2Layout.SectorSize) - 1) >> _geometry.ClusterBits;
        for (var cluster = start >> _geometry.ClusterBits; cluster <= last; cluster++)
        {
            await ChangeAsync(cluster, delta, ClusterUse.Compressed, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Writes the deferred frees into the refcount blocks (cached; the caller flushes them). Call
    /// once every L2 table that dropped those clusters is durable. Caller holds the metadata lock.
    /// </summary>
    public async ValueTask ApplyDeferredFreesAsync(bool async, CancellationToken cancellationToken)
    {
        foreach (var (cluster, amount) in _deferredFrees.OrderBy(f => f.Key).ToList())
        {
            using (var block = await _blocks.GetAsync(Table.BlockOffsetFor(cluster, long.MaxValue), async, cancellationToken).ConfigureAwait(false))
            {
                var index = (int)(cluster & (_geometry.RefcountBlockEntries - 1));
                RefcountBlock.Set(block.Span, index, _geometry.RefcountOrder, RefcountBlock.Get(block.Span, index, _geometry.RefcountOrder) - amount);
                TableCache.MarkDirty(block);
            }

            _deferredFrees.Remove(cluster); // one by one: after an I/O error the rest is still deferred
        }
    }

    /// <summary>Clusters freed since the last flush, which allocation skips.</summary>
    public int QuarantinedClusters => _quarantined.Count;

    /// <summary>
    /// Everything that unmapped the quarantined clusters is durable now (the caller flushed the L2
    /// tables, refcount blocks and L1 table): they may be allocated again.
    /// </summary>
    public void ReleaseQuarantine()
    {
        if (_quarantined.Count == 0)
        {
            return;
        }

        _freeClusterHint = Math.Min(_freeClusterHint, _quarantined.Min());
        _quarantined.Clear();
    }

    /// <summary>Reserved clusters from <paramref name="startCluster"/> on were given back: free space may start there again.</summary>
    public void NoteReleased(long startCluster) => _freeClusterHint = Math.Min(_freeClusterHint, startCluster);

    /// <summary>Forgets where free space starts (after a refcount rebuild).</summary>
    public void ResetAllocationHints()
    {
        _freeClusterHint = 0;
        _freeByteOffset = 0;
    }

    /// <summary>
    /// Finds <paramref name="count"/> contiguous clusters with refcount 0 that nobody reserved,
    /// without allocating them (extensions reserve them instead). Returns the first's offset.
    /// </summary>
    public async ValueTask<long> FindFreeClustersAsync(long count, bool async, CancellationToken cancellationToken) =>
        await FindFreeRunAsync(checked((int)count), async, cancellationToken).ConfigureAwait(false) << _geometry.ClusterBits;

    private async ValueTask<long> FindFreeRunAsync(int count, bool async, CancellationToken cancellationToken)
    {
        // The hint moves along while the search has only met clusters in use or reserved, so
        // reserved areas (an extension's index) are skipped once, not on every allocation.
        var candidate = _freeClusterHint;
        while (true)
        {
            if (_reservations.FirstOverlapEnd(candidate, count) is long after)
            {
                if (candidate == _freeClusterHint && _reservations.Covers(candidate, candidate + 1))
                {
                    _freeClusterHint = after;
                }

                candidate = after;
                continue;
            }

            // A structure the metadata references is in use whatever its refcount says: a hostile
            // image can zero a snapshot L2 table's refcount, and handing that cluster out would
            // overwrite the snapshot with guest data. (The index may lag inside one critical
            // section; it only ever lags by structures whose refcounts are right.)
            if (_metadata.Published?.FirstOverlapEnd(candidate, count) is long metadataEnd)
            {
                if (candidate == _freeClusterHint)
                {
                    _freeClusterHint = metadataEnd; // in use like any allocated cluster (freeing one lowers the hint again)
                }

                candidate = metadataEnd;
                continue;
            }

            var free = true;
            for (var i = 0; i < count; i++)
            {
                if (_quarantined.Contains(candidate + i) || await GetAsync(candidate + i, async, cancellationToken).ConfigureAwait(false) != 0)
                {
                    if (i == 0 && candidate == _freeClusterHint)
                    {
                        _freeClusterHint++;
                    }

                    candidate += i + 1;
                    free = false;
                    break;
                }
            }

            if (free)
            {
                return candidate;
            }
        }
    }
}
