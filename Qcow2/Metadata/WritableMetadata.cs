using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The metadata of an image open for writing: refcounts and allocation, the active tables, the
/// dirty-bit window and the ordered flush. Created once when a read-write open succeeds, so the
/// engine above never holds a "maybe writable" field. Every metadata write of a writable session
/// goes through here, <see cref="ActiveTables"/>, <see cref="RefcountAllocator"/> or the header
/// methods of <see cref="ImageMetadata"/>; the ordering rules (DESIGN §4) live in these types.
/// Callers hold the metadata lock.
/// </summary>
internal sealed partial class WritableMetadata
{
    private readonly ImageMetadata _metadata;
    private readonly IStorage _dataFile;
    private readonly FreedSpace? _freedSpace;
    private volatile bool _ioErrorSeen;

    /// <param name="metadata">The image's metadata.</param>
    /// <param name="refcountTable">The refcount table, loaded.</param>
    /// <param name="dataFile">Where guest data lives (flushed before any table that may point at it).</param>
    /// <param name="onDataFreed">Told about every data or compressed cluster whose refcount reaches zero.</param>
    /// <param name="returnFreedSpace">Punch the data clusters given back through <see cref="ReturnWhenDurable"/>.</param>
    public WritableMetadata(ImageMetadata metadata, RefcountTable refcountTable, IStorage dataFile, Action<long, ClusterUse> onDataFreed, bool returnFreedSpace)
    {
        _metadata = metadata;
        _dataFile = dataFile;
        var geometry = metadata.Geometry;
        if (returnFreedSpace && ReferenceEquals(dataFile, metadata.File))
        {
            _freedSpace = new FreedSpace(metadata.File, geometry.ClusterBits);
        }

        Refcounts = new RefcountAllocator(metadata.File, geometry, refcountTable, metadata.RefcountCache, metadata.L2Cache, metadata.Reservations, metadata.Overlap,
            metadata.CommitRefcountTableAsync, OnFreed, metadata.NoteFileEnd);
        Tables = new ActiveTables(metadata.File, geometry, metadata.ActiveL1, metadata.L2Cache, metadata.RefcountCache, Refcounts, () => !metadata.LazyRefcounts);

        void OnFreed(long cluster, ClusterUse use)
        {
            var offset = cluster << geometry.ClusterBits;
            metadata.L2Cache.Forget(offset);
            metadata.RefcountCache.Forget(offset);
            if (use is ClusterUse.Data or ClusterUse.Compressed)
            {
                onDataFreed(offset, use);
            }
        }
    }

    /// <summary>
    /// A data cluster in the image file was freed by the entry that owned it alone (COPIED): its
    /// blocks go back to the file system after the next flush, unless the session keeps them.
    /// </summary>
    public void ReturnWhenDurable(long cluster) => _freedSpace?.Add(cluster);

    /// <summary>Refcounts and host cluster allocation.</summary>
    public RefcountAllocator Refcounts { get; }

    /// <summary>Changes to the active L1 and L2 tables.</summary>
    public ActiveTables Tables { get; }

    /// <summary>A dirty image opened for repair stays dirty on close until a check repairs it clean.</summary>
    public bool KeepDirtyBit { get; set; }

    /// <summary>
    /// An operation of this session failed with an I/O error: the steps it completed may have
    /// left clusters referenced by refcounts but by no table (a leak), so the dirty bit stays at
    /// close and the next read-write open (ours or QEMU's) repairs them.
    /// </summary>
    public void NoteIoError() => _ioErrorSeen = true;

    /// <summary>
    /// Sets the dirty bit durably before the first metadata change since the last flush; the next
    /// flush (<see cref="CloseDirtyWindowAsync"/>) or the close clears it. Lazy refcounts need it
    /// (refcount updates are postponed), and so does everyone else: a shared cluster's COPIED flag
    /// and refcount live in two tables that cannot change in one write, and changes cut by a crash
    /// leak clusters. With the bit set, QEMU's next read-write open and ours repair both, so a
    /// crash never leaves more than the bit behind; a crash after a flush leaves a clean image.
    /// Costs two header writes and three flushes per flush that follows metadata changes.
    /// v2 images have no dirty bit.
    /// </summary>
    public void ArmDirtyBit() =>
        Refcounts.BeforeFirstChange = (a, c) => _metadata.SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty, true, a, c);

    /// <summary>No more dirty-bit window: the header no longer carries the bit (a v2 downgrade).</summary>
    public void DisarmDirtyBit() => Refcounts.BeforeFirstChange = null;

    /// <summary>
    /// After a flush every metadata change of the session is on disk and consistent, so a crash
    /// from here on has nothing to repair: the dirty bit is cleared and armed again for the next
    /// change. It stays while lazy refcounts postpone refcount updates, after an I/O error (which
    /// may have leaked clusters) and while a repair has not come out clean.
    /// </summary>
    public async ValueTask CloseDirtyWindowAsync(bool async, CancellationToken cancellationToken)
    {
        if (Refcounts.BeforeFirstChange is null && !_metadata.LazyRefcounts && !KeepDirtyBit && !_ioErrorSeen
            && (_metadata.Header.Header.Incompatible & IncompatibleFeatures.Dirty) != 0)
        {
            await _metadata.SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty, false, async, cancellationToken).ConfigureAwait(false);
            ArmDirtyBit();
        }
    }

    /// <summary>A check left the image clean: clears the dirty and corrupt bits and opens a new window.</summary>
    public async ValueTask MarkRepairedAsync(bool async, CancellationToken cancellationToken)
    {
        KeepDirtyBit = false;
        await _metadata.SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty | IncompatibleFeatures.Corrupt, false, async, cancellationToken).ConfigureAwait(false);
        ArmDirtyBit(); // the next change of this session marks the image again
    }

    /// <summary>The end of a session, after its final flush: the dirty bit is cleared unless it must stay.</summary>
    public async ValueTask CloseAsync(bool async, CancellationToken cancellationToken)
    {
        if (!KeepDirtyBit && !_ioErrorSeen)
        {
            await _metadata.SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty, false, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Data first (so no table can point at unwritten data), then refcount blocks and L2 tables in
    /// their dependency order, then the L1 entries of new L2 tables, each step flushed. Freed
    /// clusters leave quarantine only then: every unmapping of them is durable.
    /// </summary>
    public async ValueTask FlushAsync(bool async, CancellationToken cancellationToken)
    {
        var file = _metadata.File;
        if (!ReferenceEquals(_dataFile, file))
        {
            await _dataFile.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        // The refcount cache's flush ends with the fsync that makes the guest data durable too:
        // refcount blocks may reach the disk before the data (an increment early only leaks), and an
        // L2 table that points at new data flushes first if it is written earlier (an eviction, or
        // the dependency on it that frees clusters).
        await _metadata.RefcountCache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _metadata.L2Cache.FlushStorageBeforeWrite = false;
        await Refcounts.WriteTableEntriesAsync(async, cancellationToken).ConfigureAwait(false); // after a failed write
        await _metadata.L2Cache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var l1 = _metadata.ActiveL1;
        if (l1.HasDirtyEntries)
        {
            await l1.WriteDirtyAsync(file, async, cancellationToken).ConfigureAwait(false);
            await file.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        if (Refcounts.DeferredFrees > 0)
        {
            // Every entry that dropped them is durable now: the blocks may stop counting them.
            await Refcounts.ApplyDeferredFreesAsync(async, cancellationToken).ConfigureAwait(false);
            await _metadata.RefcountCache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        if (_freedSpace is not null)
        {
            await _freedSpace.PunchAsync(Refcounts, async, cancellationToken).ConfigureAwait(false);
        }

        Refcounts.ReleaseQuarantine();
    }

    /// <summary>Drops one reference from every cluster of a metadata range.</summary>
    public async ValueTask FreeMetadataAsync(long offset, long bytes, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        for (var cluster = offset >> geometry.ClusterBits; cluster < (offset + bytes + geometry.ClusterSize - 1) >> geometry.ClusterBits; cluster++)
        {
            await Refcounts.ChangeAsync(cluster, -1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Writes a new structure into fresh clusters (padded to whole clusters) and returns its offset; 0 for no bytes.</summary>
    public async ValueTask<long> WriteNewStructureAsync(ReadOnlyMemory<byte> bytes, bool async, CancellationToken cancellationToken)
    {
        if (bytes.IsEmpty)
        {
            return 0;
        }

        var geometry = _metadata.Geometry;
        var padded = new byte[geometry.RoundUpToCluster(bytes.Length)];
        bytes.CopyTo(padded);
        var offset = await Refcounts.AllocateClustersAsync((int)(padded.Length >> geometry.ClusterBits), async, cancellationToken).ConfigureAwait(false);
        await _metadata.File.WriteAsync(offset, padded, async, cancellationToken).ConfigureAwait(false);
        _metadata.NoteFileEnd(offset + padded.Length);
        return offset;
    }

    /// <summary>Writes the virtual size into the header after everything before it is durable.</summary>
    public async ValueTask WriteSizeAsync(long newSize, bool async, CancellationToken cancellationToken)
    {
        await FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await _metadata.WriteHeaderFieldsAsync(_metadata.Header.Header with { Size = newSize }, Qcow2Header.SizeOffset, 8, async, cancellationToken).ConfigureAwait(false);
    }
}
