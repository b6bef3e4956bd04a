namespace QcowDedup.Qcow2.Format;

/// <summary>
/// One active or snapshot L1 table entry (spec "Cluster mapping"): bits 9–55 hold the L2 table
/// offset, bit 63 is COPIED (the L2 table's refcount is exactly 1).
/// </summary>
/// <param name="Raw">The entry as stored (big-endian decoded).</param>
public readonly record struct L1Entry(ulong Raw)
{
    /// <summary>Bit 63: refcount of the L2 table is exactly one.</summary>
    public const ulong CopiedFlag = 1UL << 63;

    /// <summary>Bits 9–55: host offset of the L2 table.</summary>
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    /// <summary>Bits 0–8 and 56–62, which must be zero.</summary>
    public const ulong ReservedMask = 0x7f00_0000_0000_01ff;

    /// <summary>An entry pointing at nothing: the whole L2 range is unallocated.</summary>
    public static L1Entry Unallocated => default;

    /// <summary>Host offset of the L2 table, or 0 when none is allocated.</summary>
    public long L2TableOffset => (long)(Raw & OffsetMask);

    /// <summary>Whether an L2 table is allocated.</summary>
    public bool IsAllocated => L2TableOffset != 0;

    /// <summary>The COPIED flag.</summary>
    public bool IsCopied => (Raw & CopiedFlag) != 0;

    /// <summary>Reserved bits that are set (non-zero means the entry is corrupt).</summary>
    public ulong ReservedBits => Raw & ReservedMask;

    /// <summary>An entry pointing at an L2 table.</summary>
    public static L1Entry ForTable(long l2TableOffset, bool copied) =>
        new(((ulong)l2TableOffset & OffsetMask) | (copied ? CopiedFlag : 0));

    /// <summary>This entry with COPIED set or cleared.</summary>
    public L1Entry WithCopied(bool copied) => new(copied ? Raw | CopiedFlag : Raw & ~CopiedFlag);
}
