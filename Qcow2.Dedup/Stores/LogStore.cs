using QcowDedup.Qcow2.Dedup.Format;

namespace QcowDedup.Qcow2.Dedup.Stores;

/// <summary>Outcome of a log store insert.</summary>
internal enum InsertOutcome
{
    /// <summary>Stored in a free slot (possibly after moving others).</summary>
    Inserted,

    /// <summary>An entry with the same hash was replaced.</summary>
    Replaced,

    /// <summary>No place found within the kick budget: the table counts as full.</summary>
    Full,
}

/// <summary>
/// The in-RAM index of the newest entries (after the log store of the dedup RFC): a bucketized
/// cuckoo hash table of 2^order buckets with four slots each. An entry may live in one of two
/// buckets, taken from two 64-bit words of its hash masked to <c>order</c> bits. A full pair of
/// buckets is resolved by a randomized walk that moves entries to their alternate bucket; the
/// walk never revisits a slot, is bounded in length and retried a few times, and the table is
/// changed only once a complete path was found.
/// </summary>
internal sealed class LogStore
{
    /// <summary>Slots per bucket.</summary>
    public const int SlotsPerBucket = 4;

    /// <summary>Longest kick path tried.</summary>
    public const int MaxKicks = 96;

    /// <summary>Walks tried before the table counts as full.</summary>
    public const int MaxWalks = 8;

    private readonly IndexEntry[] _slots;
    private readonly Random _random;
    private readonly ulong _mask;

    public LogStore(int order, int seed = 0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(order, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(order, DedupHeader.MaxOrder);
        Order = order;
        _mask = (1UL << order) - 1;
        _slots = new IndexEntry[(1 << order) * SlotsPerBucket];
        _random = new Random(seed);
    }

    /// <summary>log2 of the bucket count.</summary>
    public int Order { get; }

    public long Buckets => 1L << Order;

    /// <summary>Slots in the table.</summary>
    public int Capacity => _slots.Length;

    /// <summary>Entries stored.</summary>
    public int Count { get; private set; }

    /// <summary>Share of slots in use.</summary>
    public double FillRate => (double)Count / Capacity;

    /// <summary>Bytes of RAM the table holds.</summary>
    public long MemoryBytes => (long)_slots.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<IndexEntry>();

    /// <summary>The slots in bucket order (empty slots included), as an incarnation stores them.</summary>
    public ReadOnlySpan<IndexEntry> Slots => _slots;

    /// <summary>The two candidate buckets of a hash at a given order.</summary>
    public static (long First, long Second) BucketsOf(ClusterHash hash, int order)
    {
        var mask = (1UL << order) - 1;
        return ((long)(hash.Word0 & mask), (long)(hash.Word1 & mask));
    }

    /// <summary>Finds the entry for <paramref name="hash"/>.</summary>
    public bool TryGet(ClusterHash hash, out IndexEntry entry)
    {
        var (first, second) = BucketsOf(hash, Order);
        if (Find(first, hash) is int a)
        {
            entry = _slots[a];
            return true;
        }

        if (Find(second, hash) is int b)
        {
            entry = _slots[b];
            return true;
        }

        entry = default;
        return false;
    }

    /// <summary>Stores <paramref name="entry"/>, replacing an entry with the same hash.</summary>
    public InsertOutcome Insert(IndexEntry entry)
    {
        var (first, second) = BucketsOf(entry.Hash, Order);
        if ((Find(first, entry.Hash) ?? Find(second, entry.Hash)) is int existing)
        {
            _slots[existing] = entry;
            return InsertOutcome.Replaced;
        }

        if ((FreeSlot(first) ?? FreeSlot(second)) is int free)
        {
            _slots[free] = entry;
            Count++;
            return InsertOutcome.Inserted;
        }

        for (var walk = 0; walk < MaxWalks; walk++)
        {
            if (TryKickWalk(entry, _random.Next(2) == 0 ? first : second))
            {
                Count++;
                return InsertOutcome.Inserted;
            }
        }

        return InsertOutcome.Full;
    }

    /// <summary>Every stored entry.</summary>
    public IEnumerable<IndexEntry> Entries()
    {
        for (var i = 0; i < _slots.Length; i++)
        {
            if (!_slots[i].IsEmpty)
            {
                yield return _slots[i];
            }
        }
    }

    /// <summary>Empties the table.</summary>
    public void Clear()
    {
        Array.Clear(_slots);
        Count = 0;
    }

    /// <summary>
    /// Looks for a chain of moves that frees a slot for <paramref name="entry"/> starting at
    /// <paramref name="bucket"/>, and applies it only when complete.
    /// </summary>
    private bool TryKickWalk(IndexEntry entry, long bucket)
    {
        var path = new List<int>(MaxKicks);
        var visited = new HashSet<int>();
        for (var kick = 0; kick < MaxKicks; kick++)
        {
            var slot = PickVictim(bucket, visited);
            if (slot < 0)
            {
                return false;
            }

            path.Add(slot);
            visited.Add(slot);
            var victim = _slots[slot];
            var (a, b) = BucketsOf(victim.Hash, Order);
            var alternate = a == bucket ? b : a;
            if (FreeSlot(alternate) is int free)
            {
                // Apply the chain backwards: the last victim takes the free slot, each earlier victim
                // the slot of the one after it, and the new entry the first slot of the path.
                _slots[free] = _slots[path[^1]];
                for (var i = path.Count - 1; i > 0; i--)
                {
                    _slots[path[i]] = _slots[path[i - 1]];
                }

                _slots[path[0]] = entry;
                return true;
            }

            bucket = alternate;
        }

        return false;
    }

    /// <summary>A random slot of the bucket whose entry can move and was not moved on this walk.</summary>
    private int PickVictim(long bucket, HashSet<int> visited)
    {
        var start = _random.Next(SlotsPerBucket);
        for (var i = 0; i < SlotsPerBucket; i++)
        {
            var slot = (int)(bucket * SlotsPerBucket) + ((start + i) % SlotsPerBucket);
            var (a, b) = BucketsOf(_slots[slot].Hash, Order);
            if (!visited.Contains(slot) && a != b)
            {
                return slot;
            }
        }

        return -1;
    }

    private int? Find(long bucket, ClusterHash hash)
    {
        var start = (int)(bucket * SlotsPerBucket);
        for (var slot = start; slot < start + SlotsPerBucket; slot++)
        {
            if (!_slots[slot].IsEmpty && _slots[slot].Hash == hash)
            {
                return slot;
            }
        }

        return null;
    }

    private int? FreeSlot(long bucket)
    {
        var start = (int)(bucket * SlotsPerBucket);
        for (var slot = start; slot < start + SlotsPerBucket; slot++)
        {
            if (_slots[slot].IsEmpty)
            {
                return slot;
            }
        }

        return null;
    }

    /// <summary>Puts an entry back exactly where an incarnation stored it (no kicks).</summary>
    internal void RestoreSlot(int slot, IndexEntry entry)
    {
        if (_slots[slot].IsEmpty && !entry.IsEmpty)
        {
            Count++;
        }

        _slots[slot] = entry;
    }
}
