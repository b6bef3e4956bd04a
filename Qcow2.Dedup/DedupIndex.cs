using System.Buffers.Binary;
using System.Security.Cryptography;
using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Dedup.Journal;
using QcowDedup.Qcow2.Dedup.Stores;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup;

/// <summary>What state an image's index was found in.</summary>
public enum DedupIndexState
{
    /// <summary>The image has no dedup index and none was asked for.</summary>
    Absent,

    /// <summary>The index is in use.</summary>
    Active,

    /// <summary>
    /// A dedup extension exists but its auto-clear bit was cleared (another program wrote the
    /// image) or it is unreadable: it is ignored, and a read-write open starts a new index.
    /// </summary>
    Stale,
}

/// <summary>
/// The deduplication index of one image: the journal and log store hold the newest entries, the
/// hash store the frozen older ones. It answers "which host cluster already holds these bytes"
/// without ever naming a cluster whose bytes may have changed: every entry carries a sequence
/// number, every free or in-place overwrite of a data cluster records a newer one, and an entry
/// older than its cluster's last change is dead. Entries written before an unclean shutdown are
/// compared byte for byte before use. All members run under the image's metadata lock.
/// </summary>
internal sealed partial class DedupIndex
{
    internal const byte HashRecord = 0x10;

    internal const byte FreeRecord = 0x11;
    private const int FreePayloadSize = 20;

    private readonly IImageExtensionHost _host;
    private readonly DedupOptions _options;
    private readonly IndexDevice _device;
    private readonly int _clusterSize;
    private readonly Dictionary<long, long> _freedAt = [];
    private readonly HashStore _hashStore = new();
    private readonly List<(long Offset, long Clusters)> _reservations = [];
    private DedupHeader _header = null!;
    private IndexJournal _journal = null!;
    private LogStore _logStore = null!;
    private long _nextSequence;
    private readonly Lock _filterLock = new();
    private Task? _filterLoader;

    private DedupIndex(IImageExtensionHost host, DedupOptions options)
    {
        _host = host;
        _options = options;
        _clusterSize = host.ClusterSize;
        _device = new IndexDevice(host);
    }

    public DedupIndexState State { get; private set; }

    /// <summary>Why the stored index was not used, when it was not.</summary>
    public string? StaleReason { get; private set; }

    /// <summary>Whether the last session ended without closing the image.</summary>
    public bool RecoveredFromCrash { get; private set; }

    public LogStore LogStore => _logStore;

    public HashStore HashStore => _hashStore;

    public IndexJournal Journal => _journal;

    public uint Epoch => _header.Epoch;

    public long ClustersWritten { get; set; }

    public long ClustersDeduplicated { get; set; }

    public int Freezes { get; private set; }

    public int Packs { get; private set; }

    public long FalsePositiveReads { get; private set; }

    /// <summary>Invalidations held in memory (host clusters changed while entries might name them).</summary>
    public int Invalidations => _freedAt.Count;

    public int ShareCap { get; private set; }

    /// <summary>Runs <paramref name="action"/> under the image's metadata lock (see <see cref="IImageExtensionHost.RunLocked"/>).</summary>
    public T RunLocked<T>(Func<T> action) => _host.RunLocked(action);

    /// <summary>
    /// The entry for <paramref name="hash"/> that may be shared for <paramref name="data"/>: newest
    /// first (log store, then incarnations youngest to oldest); dead, capped or mismatching ones are
    /// skipped. <paramref name="fromLogStore"/> tells where it came from.
    /// </summary>
    public IndexEntry? FindUsable(ClusterHash hash, ReadOnlySpan<byte> data, out bool fromLogStore)
    {
        fromLogStore = false;
        if (State != DedupIndexState.Active)
        {
            return null;
        }

        if (_logStore.TryGet(hash, out var newest) && IsUsable(newest, data))
        {
            fromLogStore = true;
            return newest;
        }

        Span<IndexEntry> candidates = stackalloc IndexEntry[Incarnation.MaxMatches];
        var live = _hashStore.Live; // youngest first; changes only under the metadata lock, which we hold
        for (var i = 0; i < live.Count; i++)
        {
            var found = live[i].Lookup(hash, _device, candidates, out var falsePositives);
            FalsePositiveReads += falsePositives;
            foreach (var candidate in candidates[..found])
            {
                if (IsUsable(candidate, data))
                {
                    return candidate;
                }
            }
        }

        return null;
    }

    /// <summary>Whether an entry still describes its host cluster's bytes and may take another reference.</summary>
    private bool IsUsable(IndexEntry entry, ReadOnlySpan<byte> data)
    {
        if (_freedAt.TryGetValue(entry.HostOffset, out var changedAt) && entry.Sequence < changedAt)
        {
            return false;
        }

        var refcount = _host.GetRefcount(entry.HostOffset);
        if (refcount == 0 || refcount >= (ulong)ShareCap)
        {
            return false;
        }

        if (_header.Verify || entry.Epoch < _header.TrustedSinceEpoch)
        {
            var stored = new byte[data.Length];
            _host.Read(entry.HostOffset, stored);
            return data.SequenceEqual(stored);
        }

        return true;
    }

    /// <summary>Records that <paramref name="hostOffset"/> now holds the bytes hashing to <paramref name="hash"/>.</summary>
    public void Insert(ClusterHash hash, long hostOffset, long guestOffset)
    {
        if (State != DedupIndexState.Active)
        {
            return;
        }

        var entry = new IndexEntry(hash, hostOffset, guestOffset, _nextSequence++, _header.Epoch);
        if (_logStore.Insert(entry) == InsertOutcome.Full)
        {
            Freeze();
            _logStore.Insert(entry);
        }

        Span<byte> record = stackalloc byte[IndexEntry.Size];
        entry.Write(record);
        Append(HashRecord, record);
    }

    /// <summary>
    /// Records that a data cluster was freed or is about to change in place: every entry recorded
    /// before now that names it is dead from here on.
    /// </summary>
    public void Invalidate(long hostOffset)
    {
        if (State != DedupIndexState.Active)
        {
            return;
        }

        var sequence = _nextSequence++;
        _freedAt[hostOffset] = sequence;
        Append(FreeRecord, EncodeFree(hostOffset, sequence));
    }

    /// <summary>RAM the index uses: the log store table, loaded filters and invalidations.</summary>
    public long MemoryBytes => State == DedupIndexState.Active
        ? _logStore.MemoryBytes + _hashStore.FilterMemoryBytes + ((long)_freedAt.Count * 48)
        : 0;

    private int DefaultOrder()
    {
        // Slots for half the disk's clusters, bounded to 2^15 buckets: 8 MiB of table, and the largest
        // order whose frozen tables keep 2-byte tags (≤ 4 bytes of RAM per frozen entry once half full).
        var clusters = Math.Max(1, _host.VirtualSize / _clusterSize);
        var buckets = Math.Max(1, clusters / 2 / LogStore.SlotsPerBucket);
        return Math.Clamp((int)Math.Ceiling(Math.Log2(buckets)), 6, 15);
    }

    private int ComputeShareCap()
    {
        var configured = _header.MaxSharesPerCluster > 0 ? (ulong)_header.MaxSharesPerCluster : Math.Max(1, _host.MaxRefcount / 2);
        return (int)Math.Min(Math.Min(configured, _host.MaxRefcount), int.MaxValue);
    }

    private long ClustersFor(long bytes) => (bytes + _clusterSize - 1) / _clusterSize;

    /// <summary>Reserves an area named by the stored index (throws when it overlaps the image).</summary>
    private void Reserve(long offset, long clusters)
    {
        _host.ReserveClusters(offset, clusters);
        _reservations.Add((offset, clusters));
    }

    private long AllocateReserved(long clusters)
    {
        var offset = _host.AllocateReservedClusters(clusters);
        _reservations.Add((offset, clusters));
        return offset;
    }

    private void ReleaseReservations()
    {
        foreach (var (offset, clusters) in _reservations)
        {
            _host.ReleaseClusters(offset, clusters);
        }

        _reservations.Clear();
    }

    private static uint RandomGeneration() => (uint)RandomNumberGenerator.GetInt32(1, int.MaxValue);

    private static byte[] EncodeFree(long hostOffset, long sequence)
    {
        var payload = new byte[FreePayloadSize];
        BinaryPrimitives.WriteInt64BigEndian(payload, hostOffset);
        BinaryPrimitives.WriteInt64BigEndian(payload.AsSpan(8), sequence);
        BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(16), Crc32C.Compute(payload.AsSpan(0, 16)));
        return payload;
    }

    private static bool TryDecodeFree(ReadOnlySpan<byte> payload, out long hostOffset, out long sequence)
    {
        hostOffset = 0;
        sequence = 0;
        if (payload.Length != FreePayloadSize || BinaryPrimitives.ReadUInt32BigEndian(payload[16..]) != Crc32C.Compute(payload[..16]))
        {
            return false;
        }

        hostOffset = BinaryPrimitives.ReadInt64BigEndian(payload);
        sequence = BinaryPrimitives.ReadInt64BigEndian(payload[8..]);
        return true;
    }

    /// <summary>Adapts the image host to the index structures' device interface.</summary>
    private sealed class IndexDevice(IImageExtensionHost host) : IIndexDevice
    {
        public void Read(long offset, Span<byte> buffer) => host.Read(offset, buffer);

        public void Write(long offset, ReadOnlySpan<byte> buffer) => host.Write(offset, buffer);
    }
}
