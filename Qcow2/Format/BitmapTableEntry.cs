namespace QcowDedup.Qcow2.Format;

/// <summary>
/// One entry of a bitmap table (spec "Bitmap table"): where one cluster of a bitmap's data
/// lives, or that the cluster is all zeros (offset 0, bit 0 clear) or all ones (offset 0, bit 0 set).
/// </summary>
/// <param name="Raw">The 64-bit entry.</param>
public readonly record struct BitmapTableEntry(ulong Raw)
{
    /// <summary>Bits 9–55: the host offset of the data cluster.</summary>
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    /// <summary>Bits 1–8 and 56–63: reserved, must be zero.</summary>
    public const ulong ReservedMask = 0xff00_0000_0000_01fe;

    /// <summary>Bit 0, meaningful only without an offset: the cluster reads as all ones.</summary>
    public const ulong AllOnesFlag = 1;

    /// <summary>Host offset of the data cluster; 0 when the cluster is not stored.</summary>
    public long Offset => (long)(Raw & OffsetMask);

    /// <summary>Whether an unstored cluster reads as all ones.</summary>
    public bool AllOnes => Offset == 0 && (Raw & AllOnesFlag) != 0;

    /// <summary>An entry pointing at a stored data cluster.</summary>
    public static BitmapTableEntry At(long offset) => new((ulong)offset & OffsetMask);

    /// <summary>
    /// Whether the entry keeps the spec's rules (QEMU's check_table_entry): no reserved bits, a
    /// cluster-aligned offset, and the all-ones bit only without an offset.
    /// </summary>
    public bool IsValid(long clusterSize) =>
        (Raw & ReservedMask) == 0 && (Offset == 0 || ((Raw & AllOnesFlag) == 0 && Offset % clusterSize == 0));
}

/// <summary>Limits and sizes of persistent dirty bitmaps, as QEMU applies them (block/qcow2-bitmap.c).</summary>
public static class BitmapLimits
{
    /// <summary>Smallest granularity, as log2 (512 bytes).</summary>
    public const int MinGranularityBits = 9;

    /// <summary>Largest granularity, as log2 (2 GiB).</summary>
    public const int MaxGranularityBits = 31;

    /// <summary>Longest name in bytes.</summary>
    public const int MaxNameBytes = 1023;

    /// <summary>Bytes of bitmap data covering <paramref name="diskSize"/> guest bytes at one bit per granule.</summary>
    public static long DataBytes(long diskSize, int granularityBits)
    {
        var bits = (diskSize + (1L << granularityBits) - 1) >> granularityBits;
        return (bits + 7) / 8;
    }

    /// <summary>Entries of the bitmap table: one per cluster of bitmap data.</summary>
    public static long TableEntries(long diskSize, int granularityBits, int clusterBits) =>
        (DataBytes(diskSize, granularityBits) + (1L << clusterBits) - 1) >> clusterBits;

    /// <summary>
    /// QEMU's default granularity for a new bitmap (bdrv_get_default_bitmap_granularity): the
    /// cluster size, kept between 4 KiB and 64 KiB.
    /// </summary>
    public static long DefaultGranularity(long clusterSize) => Math.Clamp(clusterSize, 4096, 65536);
}
