namespace QcowDedup.Qcow2.Format;

/// <summary>
/// The 64-bit cluster descriptor of an L2 entry (spec "Cluster mapping"). With extended L2 entries
/// the descriptor is followed by a <see cref="SubclusterBitmap"/>.
/// </summary>
/// <param name="Raw">The descriptor as stored (big-endian decoded).</param>
public readonly record struct L2Entry(ulong Raw)
{
    /// <summary>Bit 63: the data cluster's refcount is exactly one (standard entries only).</summary>
    public const ulong CopiedFlag = 1UL << 63;

    /// <summary>Bit 62: the cluster is compressed.</summary>
    public const ulong CompressedFlag = 1UL << 62;

    /// <summary>Bit 0: the cluster reads as zeros (v3, standard L2 entries only).</summary>
    public const ulong ZeroFlag = 1UL << 0;

    /// <summary>Bits 9–55: host offset of a standard cluster.</summary>
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    /// <summary>Bits 1–8 and 56–61 of a standard entry, which must be zero.</summary>
    public const ulong StandardReservedMask = 0x3f00_0000_0000_01fe;

    /// <summary>An unallocated entry.</summary>
    public static L2Entry Unallocated => default;

    /// <summary>Whether the compressed flag is set.</summary>
    public bool IsCompressed => (Raw & CompressedFlag) != 0;

    /// <summary>The COPIED flag.</summary>
    public bool IsCopied => (Raw & CopiedFlag) != 0;

    /// <summary>The zero flag (meaningful for standard entries without extended L2).</summary>
    public bool HasZeroFlag => (Raw & ZeroFlag) != 0;

    /// <summary>Host offset of a standard cluster (0 for none). Meaningless for compressed entries.</summary>
    public long HostOffset => (long)(Raw & OffsetMask);

    /// <summary>Reserved bits that are set in a standard entry.</summary>
    public ulong StandardReservedBits => IsCompressed ? 0 : Raw & StandardReservedMask;

    /// <summary>
    /// Classifies the entry as QEMU's qcow2_get_cluster_type does. With an external data file
    /// offset 0 is a valid cluster, told apart from "unallocated" by COPIED.
    /// </summary>
    public ClusterType GetClusterType(bool extendedL2, bool externalDataFile)
    {
        if (IsCompressed)
        {
            return ClusterType.Compressed;
        }

        if (HasZeroFlag && !extendedL2)
        {
            return HostOffset != 0 ? ClusterType.ZeroAllocated : ClusterType.ZeroPlain;
        }

        if (HostOffset == 0)
        {
            return externalDataFile && IsCopied ? ClusterType.Normal : ClusterType.Unallocated;
        }

        return ClusterType.Normal;
    }

    /// <summary>A standard data cluster at <paramref name="hostOffset"/>.</summary>
    public static L2Entry Normal(long hostOffset, bool copied) =>
        new(((ulong)hostOffset & OffsetMask) | (copied ? CopiedFlag : 0));

    /// <summary>A zero cluster without a host cluster.</summary>
    public static L2Entry ZeroPlain => new(ZeroFlag);

    /// <summary>A zero cluster that keeps its preallocated host cluster.</summary>
    public static L2Entry ZeroAllocated(long hostOffset, bool copied) =>
        new(((ulong)hostOffset & OffsetMask) | ZeroFlag | (copied ? CopiedFlag : 0));

    /// <summary>This entry with COPIED set or cleared.</summary>
    public L2Entry WithCopied(bool copied) => new(copied ? Raw | CopiedFlag : Raw & ~CopiedFlag);
}
