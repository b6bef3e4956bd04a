namespace QcowDedup.Qcow2.Format;

/// <summary>
/// The second half of an extended L2 entry (spec "Extended L2 Entries"): bit i (0–31) marks
/// subcluster i allocated, bit 32+i marks it as reading zeros.
/// </summary>
/// <param name="Raw">The bitmap as stored.</param>
public readonly record struct SubclusterBitmap(ulong Raw)
{
    /// <summary>All 32 allocation bits.</summary>
    public const ulong AllAllocatedMask = 0x0000_0000_ffff_ffff;

    /// <summary>All 32 zero bits.</summary>
    public const ulong AllZeroMask = 0xffff_ffff_0000_0000;

    /// <summary>Every subcluster allocated.</summary>
    public static SubclusterBitmap AllAllocated => new(AllAllocatedMask);

    /// <summary>Every subcluster reads as zeros.</summary>
    public static SubclusterBitmap AllZero => new(AllZeroMask);

    /// <summary>The allocation bit of subcluster <paramref name="index"/>.</summary>
    public bool IsAllocated(int index) => (Raw & AllocatedBit(index)) != 0;

    /// <summary>The zero bit of subcluster <paramref name="index"/>.</summary>
    public bool IsZero(int index) => (Raw & ZeroBit(index)) != 0;

    /// <summary>Whether any subcluster is both allocated and zero (invalid).</summary>
    public bool HasOverlap => ((Raw >> 32) & Raw) != 0;

    /// <summary>Allocation bit mask for one subcluster.</summary>
    public static ulong AllocatedBit(int index) => 1UL << index;

    /// <summary>Zero bit mask for one subcluster.</summary>
    public static ulong ZeroBit(int index) => 1UL << (index + 32);

    /// <summary>Allocation mask of subclusters [first, first + count).</summary>
    public static ulong AllocatedRange(int first, int count) =>
        count == 0 ? 0 : (count == 32 ? AllAllocatedMask : ((1UL << count) - 1) << first);

    /// <summary>Zero mask of subclusters [first, first + count).</summary>
    public static ulong ZeroRange(int first, int count) => AllocatedRange(first, count) << 32;

    /// <summary>
    /// Type of subcluster <paramref name="index"/> of a cluster whose descriptor has type
    /// <paramref name="clusterType"/> (QEMU's qcow2_get_subcluster_type).
    /// </summary>
    public SubclusterType GetSubclusterType(ClusterType clusterType, int index) => clusterType switch
    {
        ClusterType.Compressed => SubclusterType.Compressed,
        ClusterType.Normal when HasOverlap => SubclusterType.Invalid,
        ClusterType.Normal when IsZero(index) => SubclusterType.ZeroAllocated,
        ClusterType.Normal when IsAllocated(index) => SubclusterType.Normal,
        ClusterType.Normal => SubclusterType.UnallocatedAllocated,
        ClusterType.Unallocated when (Raw & AllAllocatedMask) != 0 => SubclusterType.Invalid,
        ClusterType.Unallocated when IsZero(index) => SubclusterType.ZeroPlain,
        ClusterType.Unallocated => SubclusterType.UnallocatedPlain,
        _ => throw new ArgumentOutOfRangeException(nameof(clusterType), clusterType, "Extended L2 entries have no zero-flag cluster types."),
    };

    /// <summary>
    /// Subcluster type of a cluster without extended L2 entries: each subcluster has the cluster's type.
    /// </summary>
    public static SubclusterType FromClusterType(ClusterType clusterType) => clusterType switch
    {
        ClusterType.Compressed => SubclusterType.Compressed,
        ClusterType.ZeroPlain => SubclusterType.ZeroPlain,
        ClusterType.ZeroAllocated => SubclusterType.ZeroAllocated,
        ClusterType.Normal => SubclusterType.Normal,
        _ => SubclusterType.UnallocatedPlain,
    };
}
