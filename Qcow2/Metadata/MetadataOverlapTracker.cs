using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The metadata structures an image points at now (what the overlap index is built from). The
/// header object is compared by identity: a new one comes with every header change.
/// </summary>
internal readonly record struct MetadataLayout(
    object Header,
    L1Table ActiveL1,
    RefcountTable? Refcounts,
    long SnapshotTableOffset,
    long SnapshotTableBytes,
    IReadOnlyList<SnapshotTableEntry> Snapshots,
    long BitmapDirectoryOffset,
    long BitmapDirectoryBytes,
    IReadOnlyList<BitmapDirectoryEntry> Bitmaps);

/// <summary>
/// Keeps the published <see cref="MetadataOverlapIndex"/> in step with the image's structures.
/// <see cref="Refresh"/> runs under the metadata lock (the lock calls it before every release) and
/// rebuilds only the parts whose sources changed; the data write path and the allocator read
/// <see cref="Published"/> without the lock. Snapshot L1 tables are read once per snapshot (at
/// open, or when a snapshot appears) to find the snapshots' L2 tables — only for writable images,
/// which are the only ones that allocate or write guest data.
/// </summary>
/// <param name="geometry">Cluster arithmetic.</param>
/// <param name="file">The image file (snapshot L1 tables are read from it).</param>
/// <param name="readSnapshotL1Tables">Whether to find the snapshots' L2 tables.</param>
internal sealed class MetadataOverlapTracker(Geometry geometry, IStorage file, bool readSnapshotL1Tables)
{
    /// <summary>Snapshot L1 bytes read at most (hostile images may name thousands of huge tables).</summary>
    public const long SnapshotL1ReadBudget = 64L << 20;

    private readonly Dictionary<(long Offset, int Size), long[]> _snapshotL2Tables = [];
    private readonly Dictionary<long, int> _activeL2Counts = [];
    private readonly List<long> _activeL2Clusters = [];
    private MetadataOverlapIndex? _published;
    private L1Table? _activeL1;
    private int _activeL1Version;
    private RefcountTable? _refcounts;
    private int _refcountVersion;
    private object? _header;
    private IReadOnlyList<SnapshotTableEntry>? _snapshots;
    private IReadOnlyList<BitmapDirectoryEntry>? _bitmaps;
    private long _snapshotL1BytesRead;
    private bool _snapshotL1ReadFailed;
    private ClusterRuns _activeL1Runs = ClusterRuns.Empty;
    private ClusterRuns _activeL2Runs = ClusterRuns.Empty;
    private ClusterRuns _refcountTableRuns = ClusterRuns.Empty;
    private ClusterRuns _refcountBlockRuns = ClusterRuns.Empty;
    private ClusterRuns _snapshotTableRuns = ClusterRuns.Empty;
    private ClusterRuns _inactiveL1Runs = ClusterRuns.Empty;
    private ClusterRuns _inactiveL2Runs = ClusterRuns.Empty;
    private ClusterRuns _bitmapDirectoryRuns = ClusterRuns.Empty;
    private ClusterRuns _bitmapTableRuns = ClusterRuns.Empty;

    /// <summary>The index last published (null before the first <see cref="Refresh"/>). Safe to read from any thread.</summary>
    public MetadataOverlapIndex? Published => Volatile.Read(ref _published);

    /// <summary>Whether some snapshot's L2 tables are missing from the index (the read budget ran out; an L1 table that failed to read is read again at the next refresh).</summary>
    public bool SnapshotL2TablesIncomplete { get; private set; }

    /// <summary>Brings the index up to date with <paramref name="layout"/> and returns it. Caller holds the metadata lock.</summary>
    public MetadataOverlapIndex Refresh(in MetadataLayout layout)
    {
        var changed = _published is null;
        var clusterBits = geometry.ClusterBits;
        if (!ReferenceEquals(layout.ActiveL1, _activeL1) || layout.ActiveL1.Version != _activeL1Version)
        {
            var changes = layout.ActiveL1.TakeChanges();
            if (!ReferenceEquals(layout.ActiveL1, _activeL1) || changes is null)
            {
                RecountActiveL2Tables(layout.ActiveL1.Entries);
            }
            else
            {
                // One new L2 table per 512 MiB of guest (64 KiB clusters) or per 32 KiB (512-byte
                // ones): follow the changed entries instead of rescanning a table of millions.
                foreach (var (before, after) in changes)
                {
                    CountActiveL2Table(before, -1);
                    CountActiveL2Table(after, +1);
                }
            }

            _activeL1 = layout.ActiveL1;
            _activeL1Version = layout.ActiveL1.Version;
            _activeL1Runs = ClusterRuns.FromByteRanges([(layout.ActiveL1.Offset, (long)layout.ActiveL1.Size * Qcow2Layout.L1EntrySize)], clusterBits);
            _activeL2Runs = ClusterRuns.FromSortedClusters(_activeL2Clusters);
            changed = true;
        }

        if (!ReferenceEquals(layout.Refcounts, _refcounts) || (layout.Refcounts?.Version ?? 0) != _refcountVersion)
        {
            _refcounts = layout.Refcounts;
            _refcountVersion = layout.Refcounts?.Version ?? 0;
            _refcountTableRuns = layout.Refcounts is { } table
                ? ClusterRuns.FromByteRanges([(table.Offset, (long)table.Size * Qcow2Layout.RefcountTableEntrySize)], clusterBits)
                : ClusterRuns.Empty;
            _refcountBlockRuns = layout.Refcounts is { } blocks
                ? ClusterRuns.FromByteRanges(BlocksOf(blocks.Entries.ToArray()), clusterBits)
                : ClusterRuns.Empty;
            changed = true;
        }

        if (!ReferenceEquals(layout.Header, _header) || !ReferenceEquals(layout.Snapshots, _snapshots) || !ReferenceEquals(layout.Bitmaps, _bitmaps) || _snapshotL1ReadFailed)
        {
            _header = layout.Header;
            _snapshots = layout.Snapshots;
            _bitmaps = layout.Bitmaps;
            _snapshotTableRuns = ClusterRuns.FromByteRanges([(layout.SnapshotTableOffset, layout.SnapshotTableBytes)], clusterBits);
            _inactiveL1Runs = ClusterRuns.FromByteRanges(layout.Snapshots.Select(s => (s.L1TableOffset, (long)s.L1Size * Qcow2Layout.L1EntrySize)), clusterBits);
            _inactiveL2Runs = ClusterRuns.FromByteRanges(SnapshotL2Tables(layout.Snapshots), clusterBits);
            _bitmapDirectoryRuns = ClusterRuns.FromByteRanges([(layout.BitmapDirectoryOffset, layout.BitmapDirectoryBytes)], clusterBits);
            _bitmapTableRuns = ClusterRuns.FromByteRanges(layout.Bitmaps.Select(b => (b.TableOffset, (long)b.TableSize * 8)), clusterBits);
            changed = true;
        }

        if (changed)
        {
            Volatile.Write(ref _published, new MetadataOverlapIndex(clusterBits,
            [
                (MetadataKind.MainHeader, "qcow2_header", ClusterRuns.FromByteRanges([(0, 1)], clusterBits)),
                (MetadataKind.ActiveL1, "active L1 table", _activeL1Runs),
                (MetadataKind.ActiveL2, "active L2 table", _activeL2Runs),
                (MetadataKind.RefcountTable, "refcount table", _refcountTableRuns),
                (MetadataKind.RefcountBlock, "refcount block", _refcountBlockRuns),
                (MetadataKind.SnapshotTable, "snapshot table", _snapshotTableRuns),
                (MetadataKind.InactiveL1, "inactive L1 table", _inactiveL1Runs),
                (MetadataKind.InactiveL2, "inactive L2 table", _inactiveL2Runs),
                (MetadataKind.BitmapDirectory, "bitmap directory", _bitmapDirectoryRuns),
                (MetadataKind.BitmapTable, "bitmap table", _bitmapTableRuns),
            ]));
        }

        return _published!;
    }

    /// <summary>Rebuilds the clusters the active L2 tables occupy (a misaligned table occupies two).</summary>
    private void RecountActiveL2Tables(ReadOnlySpan<ulong> entries)
    {
        _activeL2Counts.Clear();
        foreach (var raw in entries)
        {
            foreach (var cluster in ClustersOf(raw))
            {
                _activeL2Counts[cluster] = _activeL2Counts.GetValueOrDefault(cluster) + 1;
            }
        }

        _activeL2Clusters.Clear();
        _activeL2Clusters.AddRange(_activeL2Counts.Keys);
        _activeL2Clusters.Sort();
    }

    /// <summary>Adds or removes one L1 entry's L2 table (counted: hostile tables share L2 tables).</summary>
    private void CountActiveL2Table(ulong raw, int delta)
    {
        foreach (var cluster in ClustersOf(raw))
        {
            var count = _activeL2Counts.GetValueOrDefault(cluster) + delta;
            var position = _activeL2Clusters.BinarySearch(cluster);
            if (count > 0)
            {
                _activeL2Counts[cluster] = count;
                if (position < 0)
                {
                    _activeL2Clusters.Insert(~position, cluster);
                }
            }
            else
            {
                _activeL2Counts.Remove(cluster);
                if (position >= 0)
                {
                    _activeL2Clusters.RemoveAt(position);
                }
            }
        }
    }

    private long[] ClustersOf(ulong raw)
    {
        var offset = new L1Entry(raw).L2TableOffset;
        if (offset == 0)
        {
            return [];
        }

        var first = offset >> geometry.ClusterBits;
        var last = (offset + geometry.ClusterSize - 1) >> geometry.ClusterBits;
        return first == last ? [first] : [first, last];
    }

    private IEnumerable<(long, long)> BlocksOf(ulong[] entries)
    {
        foreach (var raw in entries)
        {
            var offset = new RefcountTableEntry(raw).BlockOffset;
            if (offset != 0)
            {
                yield return (offset, geometry.ClusterSize);
            }
        }
    }

    /// <summary>The L2 tables of every snapshot, reading each snapshot L1 table not seen before.</summary>
    private List<(long, long)> SnapshotL2Tables(IReadOnlyList<SnapshotTableEntry> snapshots)
    {
        var live = new HashSet<(long, int)>();
        var tables = new HashSet<long>();
        _snapshotL1ReadFailed = false;
        foreach (var snapshot in snapshots)
        {
            var key = (snapshot.L1TableOffset, snapshot.L1Size);
            live.Add(key);
            if (!_snapshotL2Tables.TryGetValue(key, out var offsets))
            {
                offsets = ReadL2Offsets(snapshot.L1TableOffset, snapshot.L1Size);
                if (offsets is null)
                {
                    _snapshotL1ReadFailed = true; // an I/O error: not remembered, read again at the next refresh
                    continue;
                }

                _snapshotL2Tables[key] = offsets;
            }

            tables.UnionWith(offsets);
        }

        foreach (var gone in _snapshotL2Tables.Keys.Where(k => !live.Contains(k)).ToList())
        {
            _snapshotL2Tables.Remove(gone);
        }

        return [.. tables.Select(t => (t, (long)geometry.ClusterSize))];
    }

    /// <summary>The L2 table offsets a snapshot L1 table names; null when reading it failed.</summary>
    private long[]? ReadL2Offsets(long l1Offset, int l1Size)
    {
        var bytes = (long)l1Size * Qcow2Layout.L1EntrySize;
        if (!readSnapshotL1Tables)
        {
            return [];
        }

        if (l1Size <= 0 || l1Offset <= 0 || bytes > Qcow2Layout.MaxL1TableBytes || _snapshotL1BytesRead + bytes > SnapshotL1ReadBudget)
        {
            SnapshotL2TablesIncomplete |= l1Size > 0;
            return [];
        }

        _snapshotL1BytesRead += bytes;
        var buffer = new byte[bytes];
        try
        {
            file.Read(l1Offset, buffer); // past the end of the file the rest stays zero
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or UnauthorizedAccessException or NotSupportedException)
        {
            _snapshotL1BytesRead -= bytes;
            return null;
        }

        var offsets = new List<long>();
        for (var i = 0; i < l1Size; i++)
        {
            var offset = new L1Entry(BinaryPrimitives.ReadUInt64BigEndian(buffer.AsSpan(i * Qcow2Layout.L1EntrySize))).L2TableOffset;
            if (offset != 0)
            {
                offsets.Add(offset);
            }
        }

        return [.. offsets];
    }
}
