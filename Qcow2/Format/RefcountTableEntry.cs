namespace QcowDedup.Qcow2.Format;

/// <summary>One refcount table entry: bits 9–63 hold the refcount block offset, bits 0–8 are reserved.</summary>
/// <param name="Raw">The entry as stored.</param>
public readonly record struct RefcountTableEntry(ulong Raw)
{
    /// <summary>Bits 9–63: host offset of the refcount block.</summary>
    public const ulong OffsetMask = 0xffff_ffff_ffff_fe00;

    /// <summary>Bits 0–8, which must be zero.</summary>
    public const ulong ReservedMask = 0x1ff;

    /// <summary>Host offset of the refcount block, or 0 when none exists.</summary>
    public long BlockOffset => (long)(Raw & OffsetMask & long.MaxValue);

    /// <summary>Reserved bits that are set.</summary>
    public ulong ReservedBits => Raw & ReservedMask;
}
