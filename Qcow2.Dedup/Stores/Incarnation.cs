using System.Buffers.Binary;
using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Dedup.Journal;

namespace QcowDedup.Qcow2.Dedup.Stores;

/// <summary>
/// A frozen log store on disk (the hash store's unit, after the dedup RFC's "incarnation"): a
/// filter of tags followed by the cuckoo table, buckets in the same places as in the log store.
/// The filter holds, per slot, the slot entry's alternate bucket index plus one (0 = empty), in
/// 2, 4 or 8 bytes depending on the order. Table blocks hold 16 whole buckets each, so a
/// candidate bucket is always one read (of its 256 bytes) within one 4 KiB block.
/// </summary>
internal sealed class Incarnation
{
    /// <summary>Bytes of a table block.</summary>
    public const int BlockSize = 4096;

    /// <summary>Buckets per table block (16 × 4 slots × 64 bytes = 4 KiB).</summary>
    public const int BucketsPerBlock = BlockSize / (LogStore.SlotsPerBucket * IndexEntry.Size);

    private readonly Lock _sync = new();
    private byte[]? _filter;

    public Incarnation(uint generation, int order, long offset, long entries, long firstSequence, long endSequence)
    {
        Generation = generation;
        Order = order;
        Offset = offset;
        Entries = entries;
        FirstSequence = firstSequence;
        EndSequence = endSequence;
    }

    public uint Generation { get; }

    public int Order { get; }

    /// <summary>Host offset of the incarnation's area.</summary>
    public long Offset { get; }

    /// <summary>Entries stored.</summary>
    public long Entries { get; }

    /// <summary>Smallest sequence number of its entries.</summary>
    public long FirstSequence { get; }

    /// <summary>Sequence numbers of its entries are below this.</summary>
    public long EndSequence { get; }

    /// <summary>Whether the filter is in memory (lookups skip the incarnation until then).</summary>
    public bool IsLoaded => Volatile.Read(ref _filter) is not null;

    /// <summary>RAM the loaded filter takes.</summary>
    public long FilterMemoryBytes => Volatile.Read(ref _filter)?.Length ?? 0;

    public long Buckets => 1L << Order;

    /// <summary>Bytes per tag for an order.</summary>
    public static int TagSize(int order) => order < 16 ? 2 : order < 32 ? 4 : 8;

    /// <summary>Bytes of the filter region (whole blocks).</summary>
    public static long FilterBytes(int order) => RoundToBlocks((1L << order) * LogStore.SlotsPerBucket * TagSize(order));

    /// <summary>Bytes of the table region (whole blocks).</summary>
    public static long TableBytes(int order) => RoundToBlocks(((1L << order) + BucketsPerBlock - 1) / BucketsPerBlock * BlockSize);

    /// <summary>Bytes of a whole incarnation area.</summary>
    public static long AreaBytes(int order) => FilterBytes(order) + TableBytes(order);

    /// <summary>Writes a log store's table and filter to <paramref name="offset"/> and returns the incarnation (filter loaded).</summary>
    public static Incarnation Freeze(LogStore store, uint generation, long offset, IIndexDevice device)
    {
        var order = store.Order;
        var slots = store.Slots;
        var tagSize = TagSize(order);
        var filter = new byte[FilterBytes(order)];
        var block = new byte[BlockSize];
        long entries = 0, first = long.MaxValue, end = 0;
        for (var bucket = 0L; bucket < store.Buckets; bucket++)
        {
            var inBlock = (int)(bucket % BucketsPerBlock);
            for (var s = 0; s < LogStore.SlotsPerBucket; s++)
            {
                var slot = (int)(bucket * LogStore.SlotsPerBucket) + s;
                var entry = slots[slot];
                var target = block.AsSpan(((inBlock * LogStore.SlotsPerBucket) + s) * IndexEntry.Size, IndexEntry.Size);
                if (entry.IsEmpty)
                {
                    target.Clear();
                    continue;
                }

                entry.Write(target);
                var (a, b) = LogStore.BucketsOf(entry.Hash, order);
                WriteTag(filter, slot, tagSize, (ulong)(a == bucket ? b : a) + 1);
                entries++;
                first = Math.Min(first, entry.Sequence);
                end = Math.Max(end, entry.Sequence + 1);
            }

            if (inBlock == BucketsPerBlock - 1 || bucket == store.Buckets - 1)
            {
                device.Write(offset + FilterBytes(order) + (bucket / BucketsPerBlock * BlockSize), block);
                Array.Clear(block);
            }
        }

        device.Write(offset, filter);
        var incarnation = new Incarnation(generation, order, offset, entries, entries == 0 ? 0 : first, end);
        incarnation._filter = filter;
        return incarnation;
    }

    /// <summary>Reads the filter from disk (done in the background after open).</summary>
    public void LoadFilter(IIndexDevice device)
    {
        lock (_sync)
        {
            if (_filter is not null)
            {
                return;
            }

            var filter = new byte[FilterBytes(Order)];
            device.Read(Offset, filter);
            Volatile.Write(ref _filter, filter);
        }
    }

    /// <summary>Forgets the filter (the incarnation is dropped).</summary>
    public void Unload()
    {
        lock (_sync)
        {
            Volatile.Write(ref _filter, null);
        }
    }

    /// <summary>Most entries one lookup finds: every slot of both candidate buckets.</summary>
    public const int MaxMatches = 2 * LogStore.SlotsPerBucket;

    /// <summary>
    /// Puts the entries for <paramref name="hash"/> into <paramref name="found"/> (room for
    /// <see cref="MaxMatches"/>) and returns how many. A tag match at either candidate bucket costs
    /// one read of that bucket's slots (256 bytes); only entries whose full hash matches are
    /// returned, the other reads are counted in <paramref name="falsePositives"/>.
    /// </summary>
    public int Lookup(ClusterHash hash, IIndexDevice device, Span<IndexEntry> found, out int falsePositives)
    {
        falsePositives = 0;
        var filter = Volatile.Read(ref _filter);
        if (filter is null)
        {
            return 0;
        }

        var (first, second) = LogStore.BucketsOf(hash, Order);
        var count = LookupBucket(filter, first, second, hash, device, found, ref falsePositives);
        if (second != first)
        {
            count += LookupBucket(filter, second, first, hash, device, found[count..], ref falsePositives);
        }

        return count;
    }

    private int LookupBucket(byte[] filter, long bucket, long alternate, ClusterHash hash, IIndexDevice device, Span<IndexEntry> found, ref int falsePositives)
    {
        const int bucketBytes = LogStore.SlotsPerBucket * IndexEntry.Size;
        Span<byte> slots = stackalloc byte[bucketBytes];
        var tagSize = TagSize(Order);
        var loaded = false;
        var count = 0;
        for (var s = 0; s < LogStore.SlotsPerBucket; s++)
        {
            if (ReadTag(filter, (int)(bucket * LogStore.SlotsPerBucket) + s, tagSize) != (ulong)alternate + 1)
            {
                continue;
            }

            if (!loaded)
            {
                var block = Offset + FilterBytes(Order) + (bucket / BucketsPerBlock * BlockSize);
                device.Read(block + (bucket % BucketsPerBlock * bucketBytes), slots);
                loaded = true;
            }

            if (IndexEntry.TryRead(slots.Slice(s * IndexEntry.Size, IndexEntry.Size), out var entry) && entry.Hash == hash)
            {
                found[count++] = entry;
            }
            else
            {
                falsePositives++;
            }
        }

        return count;
    }

    private static long RoundToBlocks(long bytes) => (bytes + BlockSize - 1) / BlockSize * BlockSize;

    private static void WriteTag(byte[] filter, int slot, int size, ulong tag)
    {
        switch (size)
        {
            case 2:
                BinaryPrimitives.WriteUInt16BigEndian(filter.AsSpan(slot * 2), (ushort)tag);
                break;
            case 4:
                BinaryPrimitives.WriteUInt32BigEndian(filter.AsSpan(slot * 4), (uint)tag);
                break;
            default:
                BinaryPrimitives.WriteUInt64BigEndian(filter.AsSpan(slot * 8), tag);
                break;
        }
    }

    private static ulong ReadTag(byte[] filter, int slot, int size) => size switch
    {
        2 => BinaryPrimitives.ReadUInt16BigEndian(filter.AsSpan(slot * 2)),
        4 => BinaryPrimitives.ReadUInt32BigEndian(filter.AsSpan(slot * 4)),
        _ => BinaryPrimitives.ReadUInt64BigEndian(filter.AsSpan(slot * 8)),
    };
}
