using System.Collections.Concurrent;
using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;


/// <summary>
/// State shared by an image and the snapshot views opened from it: the files, the header, the
/// locks and the metadata caches.
/// </summary>
internal sealed class ImageCore : IDisposable
{
    private long _fileLength;
    private string? _corruptionDetected;
    private IReadOnlyList<SnapshotTableEntry>? _rangesOf;
    private long _snapshotTableBytes;

    public ImageCore(IStorage file, HeaderCluster header, Qcow2OpenOptions options, bool ownsFile)
    {
        File = file;
        DataFile = file;
        OwnsFile = ownsFile;
        Header = header;
        Options = options;
        Geometry = new Geometry(header.Header);
        Writable = options.Writable;
        _fileLength = file.Length;
        var l2Needed = Math.Max(1, (header.Header.Size + Geometry.L2Coverage - 1) >> Geometry.L2CoverageBits);
        var l2Capacity = (int)Math.Clamp(Math.Min(options.L2CacheBytes / Geometry.ClusterSize, l2Needed), 2, int.MaxValue / 2);
        L2Cache = new TableCache(file, Geometry.ClusterSize, l2Capacity, "L2 table");
        var refcountCapacity = (int)Math.Clamp(options.RefcountCacheBytes / Geometry.ClusterSize, 4, 1 << 20);
        RefcountCache = new TableCache(file, Geometry.ClusterSize, refcountCapacity, "refcount block");
        ActiveL1 = new L1Table(header.Header.L1TableOffset, []);
        Overlap = new MetadataOverlapTracker(Geometry, file, readSnapshotL1Tables: options.Writable);
        MetadataLock.BeforeRelease = () => RefreshOverlapIndex();
        L2Cache.BeforeWrite = offset => GuardMetadata(offset, Geometry.ClusterSize, MetadataKind.ActiveL2);
        RefcountCache.BeforeWrite = offset => GuardMetadata(offset, Geometry.ClusterSize, MetadataKind.RefcountBlock);
        FeatureNamesToWrite = [.. FeatureName.Standard, .. options.Extensions.Select(e => new FeatureName(FeatureKind.Autoclear, e.AutoclearBit, e.FeatureName))];
    }

    /// <summary>The image file (all metadata, and data unless there is an external data file).</summary>
    public IStorage File { get; }

    /// <summary>Where guest data clusters live: the image file or the external data file.</summary>
    public IStorage DataFile { get; set; }

    public bool OwnsFile { get; }

    public Qcow2OpenOptions Options { get; }

    public HeaderCluster Header { get; set; }

    public Geometry Geometry { get; }

    public bool Writable { get; }

    public AsyncLock MetadataLock { get; } = new();

    public RangeLock GuestLock { get; } = new();

    public TableCache L2Cache { get; }

    public TableCache RefcountCache { get; }

    public L1Table ActiveL1 { get; set; }

    public IReadOnlyList<SnapshotTableEntry> Snapshots { get; set; } = [];

    public IReadOnlyList<BitmapDirectoryEntry> Bitmaps { get; set; } = [];

    public IGuestDisk? Backing { get; set; }

    /// <summary>Host ranges extensions own without refcounts; never allocated.</summary>
    public HostReservations Reservations { get; } = new();

    /// <summary>Where data clusters go (the allocator seam).</summary>
    public IClusterAllocator Allocator { get; set; } = FreshClusterAllocator.Instance;

    /// <summary>Refcount changes and allocation; present once the image is writable.</summary>
    public RefcountManager? RefcountManager { get; set; }

    /// <summary>Changes to the active tables; present once the image is writable.</summary>
    public ActiveTables? Tables { get; set; }

    /// <summary>Guest clusters sharing host clusters through the allocator in this session.</summary>
    public SharedReferrers Referrers { get; } = new();

    /// <summary>
    /// Data clusters being written in place right now (added under the metadata lock when the
    /// write decides so, removed when its bytes are written): sharing refuses them.
    /// </summary>
    public ConcurrentDictionary<long, byte> InPlaceWrites { get; } = new();

    /// <summary>
    /// Contents (allocator fingerprints) being stored in fresh clusters right now, added under the
    /// metadata lock at allocation and removed once linked: writers of the same bytes wait for them.
    /// </summary>
    public ConcurrentDictionary<object, TaskCompletionSource> PlacementsInFlight { get; } = new();

    /// <summary>Host clusters that dropped to one referrer which could not be found yet (COPIED to set).</summary>
    public HashSet<long> PendingCopiedFixups { get; } = [];

    /// <summary>
    /// Opened for a check (<see cref="Qcow2OpenOptions.ForRepair"/>): the L1 and refcount tables
    /// may reach past the end of the file, read as zeros as QEMU reads them, so that the check
    /// counts what is missing (and a repair restores it) instead of the open refusing the image.
    /// Nothing but the check writes through such an image; every other open refuses these tables.
    /// </summary>
    public bool ReadsTablesPastEndAsZeros => Options.ForRepair;

    /// <summary>Whether refcount updates may be postponed (compatible bit 0).</summary>
    public bool LazyRefcounts => (Header.Header.Compatible & CompatibleFeatures.LazyRefcounts) != 0;

    /// <summary>Feature names written into a rewritten header: QEMU's, plus those of loaded extensions.</summary>
    public IReadOnlyList<FeatureName> FeatureNamesToWrite { get; set; } = FeatureName.Standard;

    /// <summary>Rewrites cluster 0 (preserving unknown extensions and fields) and flushes it.</summary>
    public async ValueTask RewriteHeaderAsync(HeaderCluster header, bool async, CancellationToken cancellationToken)
    {
        var updated = header with { FeatureNames = header.Header.Version >= 3 ? FeatureNamesToWrite : header.FeatureNames };
        var bytes = updated.Serialize();
        await File.WriteAsync(0, bytes, async, cancellationToken).ConfigureAwait(false);
        await File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        Header = HeaderCluster.Parse(bytes);
    }

    /// <summary>
    /// Writes header fields in place and flushes (QEMU's targeted header updates: each call stays
    /// inside the first sector, so it is atomic), then updates the in-memory header.
    /// </summary>
    public async ValueTask WriteHeaderFieldsAsync(Qcow2Header updated, int fieldOffset, int length, bool async, CancellationToken cancellationToken)
    {
        var bytes = new byte[Math.Max(updated.Version == 2 ? Qcow2Layout.V2HeaderLength : updated.HeaderLength, Qcow2Layout.V2HeaderLength)];
        updated.Write(bytes);
        if (fieldOffset + length <= bytes.Length)
        {
            await File.WriteAsync(fieldOffset, bytes.AsMemory(fieldOffset, length), async, cancellationToken).ConfigureAwait(false);
            await File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        // else: a field the header does not have, e.g. the feature bits of a v2 header; QEMU's
        // header update keeps them in memory only (a compat=0.10 image cannot be marked corrupt or dirty).
        Header = Header with { Header = updated };
    }

    /// <summary>Bytes of the snapshot table as stored (cached per snapshot list).</summary>
    public long SnapshotTableBytes
    {
        get
        {
            var snapshots = Snapshots;
            if (!ReferenceEquals(_rangesOf, snapshots))
            {
                _snapshotTableBytes = snapshots.Sum(s => (long)s.StoredLength);
                _rangesOf = snapshots;
            }

            return _snapshotTableBytes;
        }
    }

    /// <summary>Set once a write was refused for landing on live metadata: the image is marked corrupt and takes no more writes.</summary>
    public string? CorruptionDetected => Volatile.Read(ref _corruptionDetected);

    /// <summary>Where the metadata lies: rebuilt under the metadata lock, read without it.</summary>
    public MetadataOverlapTracker Overlap { get; }

    /// <summary>
    /// Brings the overlap index up to date with the structures the image points at now and
    /// publishes it. Caller holds the metadata lock (the lock also calls it before every release).
    /// </summary>
    public MetadataOverlapIndex RefreshOverlapIndex()
    {
        var header = Header;
        var snapshots = header.Header.SnapshotCount > 0;
        var bitmaps = Bitmaps.Count > 0 && header.Bitmaps is not null;
        return Overlap.Refresh(new MetadataLayout(
            header,
            ActiveL1,
            RefcountManager?.Table ?? Refcounts,
            snapshots ? header.Header.SnapshotsOffset : 0,
            snapshots ? SnapshotTableBytes : 0,
            Snapshots,
            bitmaps ? header.Bitmaps!.DirectoryOffset : 0,
            bitmaps ? header.Bitmaps!.DirectorySize : 0,
            Bitmaps));
    }

    /// <summary>
    /// Guard for guest data written to the image file, outside the metadata lock: no data lands on
    /// any structure the image's metadata references, snapshot L2 and bitmap tables included
    /// (stricter than QEMU's default "cached" mode, which skips inactive L2 tables).
    /// </summary>
    /// <exception cref="InvalidDataException">The write would damage metadata.</exception>
    public void GuardData(long offset, long length)
    {
        var index = Overlap.Published ?? RefreshOverlapIndex(); // none yet only while opening, single-threaded
        if (index.Find(offset, length, MetadataKind.Everything) is { } structure)
        {
            RefuseWrite(structure, offset, length);
        }
    }

    /// <summary>
    /// QEMU's metadata overlap check (its "cached" mode: everything but inactive L2 tables): a
    /// write to [offset, offset + length) of the image file that would land on live metadata other
    /// than <paramref name="allowed"/> marks the image corrupt on disk and throws instead.
    /// </summary>
    /// <exception cref="InvalidDataException">The write would damage metadata.</exception>
    public void GuardMetadata(long offset, long length, MetadataKind allowed)
    {
        if (MetadataOverlap.Find(this, offset, length, allowed) is { } structure)
        {
            RefuseWrite(structure, offset, length);
        }
    }

    private void RefuseWrite(string structure, long offset, long length)
    {
        var problem = $"Preventing invalid write on metadata (overlaps with {structure}) at 0x{offset:x}, {length} bytes";
        if (Interlocked.CompareExchange(ref _corruptionDetected, problem, null) is null)
        {
            var header = Header.Header with { Incompatible = Header.Header.Incompatible | IncompatibleFeatures.Corrupt };
            SyncOver.Run(WriteHeaderFieldsAsync(header, Qcow2Header.IncompatibleFeaturesOffset, 8, async: false, CancellationToken.None));
        }

        throw Qcow2Corruption.Create("image", problem + "; the image is now marked corrupt (repair it with check -r all)", offset);
    }


    /// <summary>The refcount table, loaded on first use (read-only images rarely need it).</summary>
    public RefcountTable? Refcounts { get; set; }

    /// <summary>Optional features loaded with the image.</summary>
    public IReadOnlyList<IImageExtension> Extensions => Options.Extensions;

    /// <summary>The refcount of a host cluster, synchronously. Caller holds the metadata lock.</summary>
    public ulong GetRefcountLocked(long hostOffset)
    {
        var table = RefcountManager?.Table ?? SyncOver.Run(GetRefcountsLockedAsync(async: false, CancellationToken.None));
        return SyncOver.Run(table.GetAsync(hostOffset >> Geometry.ClusterBits, long.MaxValue, async: false, CancellationToken.None));
    }

    /// <summary>
    /// The current refcount table (the writable state's, which replaces the table as it grows), else
    /// the one loaded on first use. Caller holds the metadata lock.
    /// </summary>
    public async ValueTask<RefcountTable> GetRefcountsLockedAsync(bool async, CancellationToken cancellationToken)
    {
        if (RefcountManager is { } manager)
        {
            return manager.Table;
        }

        if (Refcounts is null)
        {
            var header = Header.Header;
            Refcounts = await RefcountTable.ReadAsync(File, Geometry, RefcountCache, header.RefcountTableOffset, header.RefcountTableClusters, async, cancellationToken, zerosPastEnd: ReadsTablesPastEndAsZeros).ConfigureAwait(false);
        }

        return Refcounts;
    }

    public DecompressedClusterCache Decompressed { get; } = new();

    /// <summary>
    /// Length of the image file as this library knows it: never less than the physical length last
    /// read, and raised by every allocation and write past it. Tables allocated but still only in
    /// the caches lie past the physical end until a flush, so this is what mapping checks entries
    /// against; it drops only when this library cuts the file (<see cref="NoteTruncated"/>).
    /// </summary>
    public long FileLength => Interlocked.Read(ref _fileLength);

    /// <summary>
    /// Records that bytes up to <paramref name="end"/> now belong to the image file: written, or
    /// allocated and about to be (the physical file may still be shorter; reads there return zeros).
    /// </summary>
    public void NoteFileEnd(long end)
    {
        var current = Interlocked.Read(ref _fileLength);
        while (end > current)
        {
            var seen = Interlocked.CompareExchange(ref _fileLength, end, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }

    /// <summary>
    /// Re-reads the physical length and returns <see cref="FileLength"/> raised to it. Never lowers
    /// it: a physical end below clusters allocated but not yet written does not make them vanish.
    /// </summary>
    public long RefreshFileLength()
    {
        NoteFileEnd(File.Length);
        return FileLength;
    }

    /// <summary>Takes the backing disk away from this layer (to close a chain without recursion).</summary>
    public IGuestDisk? DetachBacking()
    {
        var backing = Backing;
        Backing = null;
        return backing;
    }

    /// <summary>
    /// This library cut the file at <paramref name="length"/>, after a flush and past every cluster
    /// still in use, so nothing allocated lies beyond it.
    /// </summary>
    public void NoteTruncated(long length) => Interlocked.Exchange(ref _fileLength, length);

    public void Dispose()
    {
        // A chain may be 1,024 files deep: close it layer by layer, each detached from the one
        // below first, so that no thread needs stack for the whole chain to close it.
        var backing = Backing;
        Backing = null;
        while (backing is not null)
        {
            var below = backing is Qcow2Image layer ? layer.Core.DetachBacking() : null;
            backing.Dispose();
            backing = below;
        }

        if (!ReferenceEquals(DataFile, File))
        {
            DataFile.Dispose();
        }

        if (OwnsFile)
        {
            File.Dispose();
        }

        MetadataLock.Dispose();
    }
}

/// <summary>
/// Remembers the most recently decompressed cluster, so that small sequential reads through a
/// compressed cluster decompress it once rather than once per read.
/// </summary>
internal sealed class DecompressedClusterCache
{
    private readonly Lock _sync = new();
    private ulong _entry;
    private byte[]? _data;

    public bool TryCopy(L2Entry entry, int offsetInCluster, Span<byte> destination)
    {
        lock (_sync)
        {
            if (_data is null || _entry != entry.Raw)
            {
                return false;
            }

            _data.AsSpan(offsetInCluster, destination.Length).CopyTo(destination);
            return true;
        }
    }

    public void Store(L2Entry entry, ReadOnlySpan<byte> cluster)
    {
        lock (_sync)
        {
            if (_data is null || _data.Length != cluster.Length)
            {
                _data = new byte[cluster.Length];
            }

            cluster.CopyTo(_data);
            _entry = entry.Raw;
        }
    }

    /// <summary>Forgets the cached cluster (its host bytes may be reused).</summary>
    public void Invalidate()
    {
        lock (_sync)
        {
            _entry = 0;
        }
    }
}
