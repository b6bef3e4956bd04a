using System.Buffers.Binary;
using QcowDedup.Qcow2.Dedup.Journal;

namespace QcowDedup.Qcow2.Dedup.Format;

/// <summary>
/// The dedup header extension's payload (version 1, 160 bytes, big-endian, CRC-32C at the end):
/// configuration, where every index structure lives, limits and counters. Room is reserved for
/// later fields; readers of version 1 ignore it.
/// </summary>
internal sealed record DedupHeader
{
    /// <summary>The header extension's magic. Fresh: not Canet's 0xCD8E819B nor qcow2-lib's 0x434C4233.</summary>
    public const uint ExtensionType = 0x7C2E5DD1;

    /// <summary>The auto-clear bit guarding the index (QEMU clears it on its first read-write open).</summary>
    public const int AutoclearBit = 60;

    /// <summary>Name in the feature name table.</summary>
    public const string FeatureName = "deduplication index";

    public const int Size = 160;
    public const uint CurrentVersion = 1;

    /// <summary>Largest log store order anywhere (2^24 slots, about 1 GiB of table).</summary>
    public const int MaxOrder = 22;

    /// <summary>Most incarnations an index may keep (the list slot stays small).</summary>
    public const int MaxIncarnationsLimit = 1024;

    /// <summary>Hash algorithm id of SHA-256.</summary>
    public const byte Sha256 = 1;

    private const int CrcOffset = Size - 4;

    public uint Version { get; init; } = CurrentVersion;

    /// <summary>Set while the image is open for writing; found set at open means the last session crashed.</summary>
    public bool InUse { get; init; }

    /// <summary>Compare bytes on every hit.</summary>
    public bool Verify { get; init; }

    public byte HashAlgorithm { get; init; } = Sha256;

    public required int LogStoreOrder { get; init; }

    public required int HashStoreOrder { get; init; }

    public int SlotsPerBucket { get; init; } = 4;

    public required int JournalBlocks { get; init; }

    public required long JournalAreaA { get; init; }

    public required long JournalAreaB { get; init; }

    /// <summary>0: area A holds the current journal, 1: area B.</summary>
    public int ActiveJournal { get; init; }

    public uint JournalGeneration { get; init; }

    /// <summary>Offset of the current incarnation list (0: no incarnations yet).</summary>
    public long IncarnationList { get; init; }

    /// <summary>Bytes of each incarnation list slot.</summary>
    public required int IncarnationListBytes { get; init; }

    public int LiveIncarnations { get; init; }

    public required long IncarnationListAreaA { get; init; }

    public required long IncarnationListAreaB { get; init; }

    public int LimboIncarnations { get; init; }

    public required int MaxIncarnations { get; init; }

    /// <summary>RAM the index may use (0: no limit).</summary>
    public long MemoryBudget { get; init; }

    /// <summary>Current epoch; raised at every open after a crash.</summary>
    public uint Epoch { get; init; } = 1;

    /// <summary>Entries from epochs before this one are checked byte for byte before use.</summary>
    public uint TrustedSinceEpoch { get; init; } = 1;

    public long NextSequence { get; init; } = 1;

    public long NextGeneration { get; init; } = 2;

    public long ClustersWritten { get; init; }

    public long ClustersDeduplicated { get; init; }

    /// <summary>References a host cluster may get through sharing (0: half the refcount maximum).</summary>
    public int MaxSharesPerCluster { get; init; }

    public long CurrentJournalArea => ActiveJournal == 0 ? JournalAreaA : JournalAreaB;

    public long SpareJournalArea => ActiveJournal == 0 ? JournalAreaB : JournalAreaA;

    public byte[] Encode()
    {
        var bytes = new byte[Size];
        var span = bytes.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(span, Version);
        BinaryPrimitives.WriteUInt32BigEndian(span[4..], (InUse ? 1u : 0) | (Verify ? 2u : 0));
        span[8] = HashAlgorithm;
        span[9] = (byte)LogStoreOrder;
        span[10] = (byte)HashStoreOrder;
        span[11] = (byte)SlotsPerBucket;
        BinaryPrimitives.WriteInt32BigEndian(span[12..], JournalBlocks);
        BinaryPrimitives.WriteInt64BigEndian(span[16..], JournalAreaA);
        BinaryPrimitives.WriteInt64BigEndian(span[24..], JournalAreaB);
        span[32] = (byte)ActiveJournal;
        BinaryPrimitives.WriteUInt32BigEndian(span[36..], JournalGeneration);
        BinaryPrimitives.WriteInt64BigEndian(span[40..], IncarnationList);
        BinaryPrimitives.WriteInt32BigEndian(span[48..], IncarnationListBytes);
        BinaryPrimitives.WriteInt32BigEndian(span[52..], LiveIncarnations);
        BinaryPrimitives.WriteInt64BigEndian(span[56..], IncarnationListAreaA);
        BinaryPrimitives.WriteInt64BigEndian(span[64..], IncarnationListAreaB);
        BinaryPrimitives.WriteInt32BigEndian(span[72..], LimboIncarnations);
        BinaryPrimitives.WriteInt32BigEndian(span[76..], MaxIncarnations);
        BinaryPrimitives.WriteInt64BigEndian(span[80..], MemoryBudget);
        BinaryPrimitives.WriteUInt32BigEndian(span[88..], Epoch);
        BinaryPrimitives.WriteUInt32BigEndian(span[92..], TrustedSinceEpoch);
        BinaryPrimitives.WriteInt64BigEndian(span[96..], NextSequence);
        BinaryPrimitives.WriteInt64BigEndian(span[104..], ClustersWritten);
        BinaryPrimitives.WriteInt64BigEndian(span[112..], ClustersDeduplicated);
        BinaryPrimitives.WriteInt32BigEndian(span[120..], MaxSharesPerCluster);
        BinaryPrimitives.WriteInt64BigEndian(span[128..], NextGeneration);
        BinaryPrimitives.WriteUInt32BigEndian(span[CrcOffset..], Crc32C.Compute(span[..CrcOffset]));
        return bytes;
    }

    /// <summary>
    /// Largest sensible log store order for a disk: a table with slots for twice its clusters
    /// (never below 2^6 buckets). Stored headers claiming more are not trusted, so a damaged or
    /// hostile image cannot make the reader allocate a huge table.
    /// </summary>
    public static int MaxOrderFor(long virtualSize, int clusterSize)
    {
        var clusters = Math.Max(1, virtualSize / clusterSize);
        var buckets = Math.Max(1, 2 * clusters / 4);
        return Math.Clamp((int)Math.Ceiling(Math.Log2(buckets)), 6, MaxOrder);
    }

    /// <summary>Journal blocks an index of <paramref name="order"/> is created with: room for three table-fulls of entries.</summary>
    public static int JournalBlocksFor(int order) => IndexJournal.BlocksFor(3L * 4 << order, IndexEntry.Size + 2);

    /// <summary>Decodes and sanity-checks a payload; null when it cannot be trusted (the index is then rebuilt).</summary>
    public static DedupHeader? TryDecode(ReadOnlySpan<byte> payload, int clusterSize, long virtualSize, out string? problem)
    {
        problem = null;
        if (payload.Length < Size)
        {
            problem = $"the dedup extension is {payload.Length} bytes, shorter than {Size}";
            return null;
        }

        if (BinaryPrimitives.ReadUInt32BigEndian(payload[CrcOffset..]) != Crc32C.Compute(payload[..CrcOffset]))
        {
            problem = "the dedup extension's checksum does not match";
            return null;
        }

        var version = BinaryPrimitives.ReadUInt32BigEndian(payload);
        var header = new DedupHeader
        {
            Version = version,
            InUse = (BinaryPrimitives.ReadUInt32BigEndian(payload[4..]) & 1) != 0,
            Verify = (BinaryPrimitives.ReadUInt32BigEndian(payload[4..]) & 2) != 0,
            HashAlgorithm = payload[8],
            LogStoreOrder = payload[9],
            HashStoreOrder = payload[10],
            SlotsPerBucket = payload[11],
            JournalBlocks = BinaryPrimitives.ReadInt32BigEndian(payload[12..]),
            JournalAreaA = BinaryPrimitives.ReadInt64BigEndian(payload[16..]),
            JournalAreaB = BinaryPrimitives.ReadInt64BigEndian(payload[24..]),
            ActiveJournal = payload[32],
            JournalGeneration = BinaryPrimitives.ReadUInt32BigEndian(payload[36..]),
            IncarnationList = BinaryPrimitives.ReadInt64BigEndian(payload[40..]),
            IncarnationListBytes = BinaryPrimitives.ReadInt32BigEndian(payload[48..]),
            LiveIncarnations = BinaryPrimitives.ReadInt32BigEndian(payload[52..]),
            IncarnationListAreaA = BinaryPrimitives.ReadInt64BigEndian(payload[56..]),
            IncarnationListAreaB = BinaryPrimitives.ReadInt64BigEndian(payload[64..]),
            LimboIncarnations = BinaryPrimitives.ReadInt32BigEndian(payload[72..]),
            MaxIncarnations = BinaryPrimitives.ReadInt32BigEndian(payload[76..]),
            MemoryBudget = BinaryPrimitives.ReadInt64BigEndian(payload[80..]),
            Epoch = BinaryPrimitives.ReadUInt32BigEndian(payload[88..]),
            TrustedSinceEpoch = BinaryPrimitives.ReadUInt32BigEndian(payload[92..]),
            NextSequence = BinaryPrimitives.ReadInt64BigEndian(payload[96..]),
            ClustersWritten = BinaryPrimitives.ReadInt64BigEndian(payload[104..]),
            ClustersDeduplicated = BinaryPrimitives.ReadInt64BigEndian(payload[112..]),
            MaxSharesPerCluster = BinaryPrimitives.ReadInt32BigEndian(payload[120..]),
            NextGeneration = BinaryPrimitives.ReadInt64BigEndian(payload[128..]),
        };
        problem = header.Validate(clusterSize, virtualSize);
        return problem is null ? header : null;
    }

    private string? Validate(int clusterSize, long virtualSize)
    {
        bool Aligned(long offset) => offset > 0 && offset % clusterSize == 0;
        if (Version != CurrentVersion)
        {
            return $"dedup extension version {Version} is not understood";
        }

        if (HashAlgorithm != Sha256 || SlotsPerBucket != 4)
        {
            return $"hash algorithm {HashAlgorithm} with {SlotsPerBucket} slots per bucket is not supported";
        }

        var maxOrder = MaxOrderFor(virtualSize, clusterSize);
        if (LogStoreOrder < 1 || LogStoreOrder > maxOrder || HashStoreOrder != LogStoreOrder)
        {
            return $"log store order {LogStoreOrder} / hash store order {HashStoreOrder} are out of range (at most {maxOrder} for this disk)";
        }

        if (JournalBlocks < 1 || JournalBlocks > JournalBlocksFor(LogStoreOrder) || !Aligned(JournalAreaA) || !Aligned(JournalAreaB) || ActiveJournal > 1)
        {
            return "the journal areas are misplaced";
        }

        if (!Aligned(IncarnationListAreaA) || !Aligned(IncarnationListAreaB) || IncarnationListBytes is < 4096 or > 16 << 20
            || (IncarnationList != 0 && IncarnationList != IncarnationListAreaA && IncarnationList != IncarnationListAreaB))
        {
            return "the incarnation list is misplaced";
        }

        if (MaxIncarnations is < 1 or > MaxIncarnationsLimit || LiveIncarnations < 0 || LimboIncarnations < 0 || NextSequence < 1)
        {
            return "the incarnation counts are out of range";
        }

        return null;
    }
}
