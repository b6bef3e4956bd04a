using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The metadata of one open image file, as QEMU's BDRVQcow2State holds it: the header, the
/// active L1 table, the snapshot table and bitmap directory, the refcount table, the L2 and
/// refcount block caches, the metadata lock and the overlap index that guards every write.
/// Header bytes are written only here; table bytes only by the types of this layer.
/// </summary>
internal sealed class ImageMetadata
{
    private long _fileLength;
    private string? _corruptionDetected;
    private IReadOnlyList<SnapshotTableEntry>? _rangesOf;
    private long _snapshotTableBytes;

    /// <param name="file">The image file.</param>
    /// <param name="header">Cluster 0 as read.</param>
    /// <param name="caches">How much memory the L2 and refcount block caches may use.</param>
    /// <param name="writable">Whether the image is open for writing (the overlap index then reads snapshot L1 tables too).</param>
    /// <param name="tablesPastEndReadAsZeros">Opened for a check: tables reaching past the end read as zeros, as in QEMU.</param>
    /// <param name="featureNamesToWrite">Feature names written into a rewritten header.</param>
    public ImageMetadata(IStorage file, HeaderCluster header, (long L2Bytes, long RefcountBytes) caches, bool writable, bool tablesPastEndReadAsZeros, IReadOnlyList<FeatureName> featureNamesToWrite)
    {
        File = file;
        Header = header;
        Geometry = new Geometry(header.Header);
        Writable = writable;
        ReadsTablesPastEndAsZeros = tablesPastEndReadAsZeros;
        FeatureNamesToWrite = featureNamesToWrite;
        _fileLength = file.Length;
        var l2Needed = Math.Max(1, (header.Header.Size + Geometry.L2Coverage - 1) >> Geometry.L2CoverageBits);
        var l2Capacity = (int)Math.Clamp(Math.Min(caches.L2Bytes / Geometry.ClusterSize, l2Needed), 2, int.MaxValue / 2);
        L2Cache = new TableCache(file, Geometry.ClusterSize, l2Capacity, "L2 table");
        var refcountCapacity = (int)Math.Clamp(caches.RefcountBytes / Geometry.ClusterSize, 4, 1 << 20);
        RefcountCache = new TableCache(file, Geometry.ClusterSize, refcountCapacity, "refcount block");
        ActiveL1 = new L1Table(header.Header.L1TableOffset, []);
        Overlap = new MetadataOverlapTracker(Geometry, file, readSnapshotL1Tables: writable);
        MetadataLock.BeforeRelease = () => RefreshOverlapIndex();
        L2Cache.BeforeWrite = offset => GuardMetadata(offset, Geometry.ClusterSize, MetadataKind.ActiveL2);
        RefcountCache.BeforeWrite = offset => GuardMetadata(offset, Geometry.ClusterSize, MetadataKind.RefcountBlock);
    }

    /// <summary>The image file: every metadata structure, and guest data unless a data file holds it.</summary>
    public IStorage File { get; }

    /// <summary>Cluster 0 as this session last wrote or read it.</summary>
    public HeaderCluster Header { get; private set; }

    public Geometry Geometry { get; }

    /// <summary>Whether the image is open for writing.</summary>
    public bool Writable { get; }

    /// <summary>Guards every metadata structure; held for every change and for reads of mutable tables.</summary>
    public AsyncLock MetadataLock { get; } = new();

    public TableCache L2Cache { get; }

    public TableCache RefcountCache { get; }

    /// <summary>The active L1 table (replaced when the image opens, entries changed in place).</summary>
    public L1Table ActiveL1 { get; set; }

    /// <summary>The snapshot table as stored; replaced whole by <see cref="WritableMetadata.WriteSnapshotTableAsync"/>.</summary>
    public IReadOnlyList<SnapshotTableEntry> Snapshots { get; set; } = [];

    /// <summary>The bitmap directory as stored.</summary>
    public IReadOnlyList<BitmapDirectoryEntry> Bitmaps { get; set; } = [];

    /// <summary>Host ranges extensions own without refcounts; never allocated.</summary>
    public HostReservations Reservations { get; } = new();

    /// <summary>
    /// Opened for a check: the L1 and refcount tables may reach past the end of the file, read as
    /// zeros as QEMU reads them, so that the check counts what is missing (and a repair restores
    /// it) instead of the open refusing the image. Nothing but the check writes through such an
    /// image; every other open refuses these tables.
    /// </summary>
    public bool ReadsTablesPastEndAsZeros { get; }

    /// <summary>Whether refcount updates may be postponed (compatible bit 0).</summary>
    public bool LazyRefcounts => (Header.Header.Compatible & CompatibleFeatures.LazyRefcounts) != 0;

    /// <summary>Feature names written into a rewritten header: QEMU's, plus those of loaded extensions.</summary>
    public IReadOnlyList<FeatureName> FeatureNamesToWrite { get; }

    /// <summary>The refcount table, loaded on first use (read-only images rarely need it), then changed in place.</summary>
    public RefcountTable? Refcounts { get; private set; }

    /// <summary>Where the metadata lies: rebuilt under the metadata lock, read without it.</summary>
    public MetadataOverlapTracker Overlap { get; }

    /// <summary>Set once a write was refused for landing on live metadata: the image is marked corrupt and takes no more writes.</summary>
    public string? CorruptionDetected => Volatile.Read(ref _corruptionDetected);

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

    /// <summary>Sets or clears incompatible bits with one small durable header write (v3 only).</summary>
    public async ValueTask SetIncompatibleBitsAsync(IncompatibleFeatures bits, bool set, bool async, CancellationToken cancellationToken)
    {
        var header = Header.Header;
        var updated = set ? header.Incompatible | bits : header.Incompatible & ~bits;
        if (header.Version < 3 || updated == header.Incompatible)
        {
            return;
        }

        if (set)
        {
            // Nothing may reach the disk under the dirty bit's protection before the bit itself.
            await File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await WriteHeaderFieldsAsync(header with { Incompatible = updated }, Qcow2Header.IncompatibleFeaturesOffset, 8, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Points the header at a refcount table already written and flushed.</summary>
    public ValueTask CommitRefcountTableAsync(long offset, int clusters, bool async, CancellationToken cancellationToken) =>
        WriteHeaderFieldsAsync(Header.Header with { RefcountTableOffset = offset, RefcountTableClusters = clusters }, Qcow2Header.RefcountTableOffsetOffset, 12, async, cancellationToken);

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
            Refcounts,
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
        if (FindOverlap(offset, length, allowed) is { } structure)
        {
            RefuseWrite(structure, offset, length);
        }
    }

    /// <summary>
    /// The name QEMU gives the first structure that [offset, offset + size) would overwrite, other
    /// than <paramref name="ignore"/>, or null. Caller holds the metadata lock (the index is
    /// brought up to date first); during a refcount rebuild it still holds the old refcount table.
    /// </summary>
    public string? FindOverlap(long offset, long size, MetadataKind ignore = MetadataKind.None) =>
        RefreshOverlapIndex().Find(offset, size, MetadataKind.QemuCached & ~ignore);

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

    /// <summary>The refcount of a host cluster, synchronously. Caller holds the metadata lock.</summary>
    public ulong GetRefcountLocked(long hostOffset)
    {
        var table = SyncOver.Run(GetRefcountsLockedAsync(async: false, CancellationToken.None));
        return SyncOver.Run(table.GetAsync(hostOffset >> Geometry.ClusterBits, long.MaxValue, async: false, CancellationToken.None));
    }

    /// <summary>The refcount table, read on first use. Caller holds the metadata lock.</summary>
    public async ValueTask<RefcountTable> GetRefcountsLockedAsync(bool async, CancellationToken cancellationToken)
    {
        if (Refcounts is null)
        {
            var header = Header.Header;
            Refcounts = await RefcountTable.ReadAsync(File, Geometry, RefcountCache, header.RefcountTableOffset, header.RefcountTableClusters, async, cancellationToken, zerosPastEnd: ReadsTablesPastEndAsZeros).ConfigureAwait(false);
        }

        return Refcounts;
    }

    /// <summary>Reads a snapshot's L1 table, refusing one over QEMU's limits or not cluster aligned.</summary>
    public async ValueTask<ulong[]> ReadSnapshotL1Async(SnapshotTableEntry snapshot, bool async, CancellationToken cancellationToken)
    {
        if (snapshot.L1Size == 0)
        {
            return [];
        }

        if ((long)snapshot.L1Size * Qcow2Layout.L1EntrySize > Qcow2Layout.MaxL1TableBytes || !Geometry.IsClusterAligned(snapshot.L1TableOffset))
        {
            throw Qcow2Corruption.Create("snapshot table entry", $"snapshot '{snapshot.Name}' has an L1 table of {snapshot.L1Size} entries at 0x{snapshot.L1TableOffset:x}", snapshot.L1TableOffset);
        }

        var table = await L1Table.ReadAsync(File, snapshot.L1TableOffset, snapshot.L1Size, "snapshot L1 table", async, cancellationToken).ConfigureAwait(false);
        return table.ToArray();
    }

    /// <summary>
    /// Writes an extension's own bytes, only inside clusters it reserved (never refcounted, never
    /// allocated to anything else); false, writing nothing, when the range leaves them.
    /// </summary>
    public bool TryWriteReserved(long hostOffset, ReadOnlySpan<byte> buffer)
    {
        var bits = Geometry.ClusterBits;
        if (!Reservations.Covers(hostOffset >> bits, (hostOffset + buffer.Length + Geometry.ClusterSize - 1) >> bits))
        {
            return false;
        }

        File.Write(hostOffset, buffer);
        NoteFileEnd(hostOffset + buffer.Length);
        return true;
    }

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

    /// <summary>
    /// This library cut the file at <paramref name="length"/>, after a flush and past every cluster
    /// still in use, so nothing allocated lies beyond it.
    /// </summary>
    public void NoteTruncated(long length) => Interlocked.Exchange(ref _fileLength, length);
}
