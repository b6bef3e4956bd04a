using System.Buffers.Binary;

namespace QcowDedup.Qcow2.Format;

/// <summary>
/// The fixed qcow2 header (spec "Header"): the 72 bytes of version 2, the v3 fields up to
/// header_length, the compression_type additional field, and any further additional fields this
/// library does not know, kept verbatim so that a header rewrite preserves them.
/// </summary>
public sealed record Qcow2Header
{
    // Field offsets, in the order of the spec's table.
    internal const int MagicOffset = 0;
    internal const int VersionOffset = 4;
    internal const int BackingFileOffsetOffset = 8;
    internal const int BackingFileSizeOffset = 16;
    internal const int ClusterBitsOffset = 20;
    internal const int SizeOffset = 24;
    internal const int CryptMethodOffset = 32;
    internal const int L1SizeOffset = 36;
    internal const int L1TableOffsetOffset = 40;
    internal const int RefcountTableOffsetOffset = 48;
    internal const int RefcountTableClustersOffset = 56;
    internal const int SnapshotCountOffset = 60;
    internal const int SnapshotsOffsetOffset = 64;
    internal const int IncompatibleFeaturesOffset = Qcow2Layout.V2HeaderLength;
    internal const int CompatibleFeaturesOffset = 80;
    internal const int AutoclearFeaturesOffset = 88;
    internal const int RefcountOrderOffset = 96;
    internal const int HeaderLengthOffset = 100;
    internal const int CompressionTypeOffset = Qcow2Layout.V3MinHeaderLength;

    /// <summary>Bytes a reader needs before it knows the cluster size and header length.</summary>
    public const int MinimumReadLength = Qcow2Layout.V3MinHeaderLength;

    /// <summary>2 or 3.</summary>
    public required int Version { get; init; }

    /// <summary>Offset of the backing file name in cluster 0, or 0 without a backing file.</summary>
    public long BackingFileOffset { get; init; }

    /// <summary>Length of the backing file name in bytes (not NUL terminated).</summary>
    public int BackingFileSize { get; init; }

    /// <summary>log2 of the cluster size.</summary>
    public required int ClusterBits { get; init; }

    /// <summary>Virtual disk size in bytes.</summary>
    public required long Size { get; init; }

    /// <summary>Encryption method of guest data.</summary>
    public EncryptionMethod CryptMethod { get; init; }

    /// <summary>Number of entries in the active L1 table.</summary>
    public int L1Size { get; init; }

    /// <summary>Host offset of the active L1 table.</summary>
    public long L1TableOffset { get; init; }

    /// <summary>Host offset of the refcount table.</summary>
    public long RefcountTableOffset { get; init; }

    /// <summary>Size of the refcount table in clusters.</summary>
    public int RefcountTableClusters { get; init; }

    /// <summary>Number of internal snapshots.</summary>
    public int SnapshotCount { get; init; }

    /// <summary>Host offset of the snapshot table.</summary>
    public long SnapshotsOffset { get; init; }

    /// <summary>Incompatible feature bits (v3; always zero in v2).</summary>
    public IncompatibleFeatures Incompatible { get; init; }

    /// <summary>Compatible feature bits (v3; always zero in v2).</summary>
    public CompatibleFeatures Compatible { get; init; }

    /// <summary>Auto-clear feature bits (v3; always zero in v2).</summary>
    public AutoclearFeatures Autoclear { get; init; }

    /// <summary>log2 of the refcount width in bits (v2: always 4).</summary>
    public int RefcountOrder { get; init; } = Qcow2Layout.V2RefcountOrder;

    /// <summary>Length of the header structure; extensions start here.</summary>
    public int HeaderLength { get; init; } = Qcow2Layout.V2HeaderLength;

    /// <summary>Compression algorithm of compressed clusters (additional field at byte 104).</summary>
    public CompressionType CompressionType { get; init; }

    /// <summary>
    /// Header bytes from offset 112 up to header_length: additional fields this library does not
    /// know. The spec requires them to survive a header rewrite.
    /// </summary>
    public ReadOnlyMemory<byte> UnknownAdditionalFields { get; init; }

    /// <summary>Cluster size in bytes.</summary>
    public int ClusterSize => 1 << ClusterBits;

    /// <summary>Refcount entry width in bits.</summary>
    public int RefcountBits => 1 << RefcountOrder;

    /// <summary>Whether extended (128-bit) L2 entries are in use.</summary>
    public bool HasExtendedL2 => (Incompatible & IncompatibleFeatures.ExtendedL2) != 0;

    /// <summary>Whether guest data lives in an external data file.</summary>
    public bool HasExternalDataFile => (Incompatible & IncompatibleFeatures.ExternalDataFile) != 0;

    /// <summary>Bytes per L2 entry (8, or 16 with extended L2).</summary>
    public int L2EntrySize => HasExtendedL2 ? Qcow2Layout.ExtendedL2EntrySize : Qcow2Layout.L2EntrySize;

    /// <summary>Entries per L2 table.</summary>
    public int L2Entries => ClusterSize / L2EntrySize;

    /// <summary>log2 of the guest bytes one L2 table maps.</summary>
    public int L2CoverageBits => ClusterBits + (ClusterBits - (HasExtendedL2 ? 4 : 3));

    /// <summary>Guest bytes mapped by one L2 table.</summary>
    public long L2Coverage => 1L << L2CoverageBits;

    /// <summary>L1 entries needed to map <see cref="Size"/> bytes.</summary>
    public long RequiredL1Size => RequiredL1Entries(Size, ClusterBits, HasExtendedL2);

    /// <summary>L1 entries needed to map <paramref name="size"/> guest bytes.</summary>
    public static long RequiredL1Entries(long size, int clusterBits, bool extendedL2)
    {
        var coverageBits = clusterBits + (clusterBits - (extendedL2 ? 4 : 3));
        return (long)(((ulong)size + (1UL << coverageBits) - 1) >> coverageBits);
    }

    /// <summary>
    /// Parses the fixed header from the start of cluster 0. Only checks that the bytes can be
    /// decoded; <see cref="HeaderValidator"/> applies QEMU's open-time rules.
    /// </summary>
    /// <exception cref="InvalidDataException">Bad magic or a buffer too short for the header.</exception>
    /// <exception cref="NotSupportedException">A version other than 2 or 3.</exception>
    public static Qcow2Header Parse(ReadOnlySpan<byte> cluster0)
    {
        if (cluster0.Length < Qcow2Layout.V2HeaderLength)
        {
            throw Qcow2Corruption.Create("header", $"file is {cluster0.Length} bytes, shorter than the {Qcow2Layout.V2HeaderLength}-byte header", 0);
        }

        var magic = BinaryPrimitives.ReadUInt32BigEndian(cluster0[MagicOffset..]);
        if (magic != Qcow2Layout.Magic)
        {
            throw Qcow2Corruption.Create("header", $"magic is 0x{magic:x8}, not qcow2's 0x{Qcow2Layout.Magic:x8}", 0);
        }

        var version = BinaryPrimitives.ReadUInt32BigEndian(cluster0[VersionOffset..]);
        if (version is not (2 or 3))
        {
            throw new NotSupportedException($"qcow2 version {version} is not supported (only 2 and 3 exist).");
        }

        var clusterBits = BinaryPrimitives.ReadUInt32BigEndian(cluster0[ClusterBitsOffset..]);
        var size = BinaryPrimitives.ReadUInt64BigEndian(cluster0[SizeOffset..]);
        if (size > long.MaxValue)
        {
            throw Qcow2Corruption.Create("header", $"virtual size {size} is larger than the largest supported size", SizeOffset);
        }

        var header = new Qcow2Header
        {
            Version = (int)version,
            BackingFileOffset = ReadOffset(cluster0, BackingFileOffsetOffset, "backing_file_offset"),
            BackingFileSize = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(cluster0[BackingFileSizeOffset..]), int.MaxValue),
            ClusterBits = (int)Math.Min(clusterBits, int.MaxValue),
            Size = (long)size,
            CryptMethod = (EncryptionMethod)BinaryPrimitives.ReadUInt32BigEndian(cluster0[CryptMethodOffset..]),
            L1Size = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(cluster0[L1SizeOffset..]), int.MaxValue),
            L1TableOffset = ReadOffset(cluster0, L1TableOffsetOffset, "l1_table_offset"),
            RefcountTableOffset = ReadOffset(cluster0, RefcountTableOffsetOffset, "refcount_table_offset"),
            RefcountTableClusters = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(cluster0[RefcountTableClustersOffset..]), int.MaxValue),
            SnapshotCount = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(cluster0[SnapshotCountOffset..]), int.MaxValue),
            SnapshotsOffset = ReadOffset(cluster0, SnapshotsOffsetOffset, "snapshots_offset"),
        };

        if (version == 2)
        {
            return header;
        }

        if (cluster0.Length < Qcow2Layout.V3MinHeaderLength)
        {
            throw Qcow2Corruption.Create("header", $"file is {cluster0.Length} bytes, shorter than the {Qcow2Layout.V3MinHeaderLength}-byte version 3 header", 0);
        }

        var headerLength = BinaryPrimitives.ReadUInt32BigEndian(cluster0[HeaderLengthOffset..]);
        if (headerLength < Qcow2Layout.V3MinHeaderLength)
        {
            throw Qcow2Corruption.Create("header", $"header_length {headerLength} is shorter than the {Qcow2Layout.V3MinHeaderLength} bytes version 3 requires", HeaderLengthOffset);
        }

        if (headerLength > (uint)cluster0.Length)
        {
            throw Qcow2Corruption.Create("header", $"header_length {headerLength} exceeds the {cluster0.Length} bytes of cluster 0", HeaderLengthOffset);
        }

        var compression = headerLength > CompressionTypeOffset
            ? (CompressionType)cluster0[CompressionTypeOffset]
            : CompressionType.Deflate;
        var unknown = headerLength > Qcow2Layout.V3HeaderLength
            ? cluster0[Qcow2Layout.V3HeaderLength..(int)headerLength].ToArray()
            : [];

        return header with
        {
            Incompatible = (IncompatibleFeatures)BinaryPrimitives.ReadUInt64BigEndian(cluster0[IncompatibleFeaturesOffset..]),
            Compatible = (CompatibleFeatures)BinaryPrimitives.ReadUInt64BigEndian(cluster0[CompatibleFeaturesOffset..]),
            Autoclear = (AutoclearFeatures)BinaryPrimitives.ReadUInt64BigEndian(cluster0[AutoclearFeaturesOffset..]),
            RefcountOrder = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(cluster0[RefcountOrderOffset..]), int.MaxValue),
            HeaderLength = (int)headerLength,
            CompressionType = compression,
            UnknownAdditionalFields = unknown,
        };
    }

    /// <summary>
    /// Writes the fixed header into <paramref name="destination"/> and returns the bytes written
    /// (72 for v2, header_length for v3).
    /// </summary>
    public int Write(Span<byte> destination)
    {
        var length = Version == 2 ? Qcow2Layout.V2HeaderLength : HeaderLength;
        ArgumentOutOfRangeException.ThrowIfLessThan(destination.Length, length);
        destination[..length].Clear();
        BinaryPrimitives.WriteUInt32BigEndian(destination[MagicOffset..], Qcow2Layout.Magic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[VersionOffset..], (uint)Version);
        BinaryPrimitives.WriteUInt64BigEndian(destination[BackingFileOffsetOffset..], (ulong)BackingFileOffset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[BackingFileSizeOffset..], (uint)BackingFileSize);
        BinaryPrimitives.WriteUInt32BigEndian(destination[ClusterBitsOffset..], (uint)ClusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(destination[SizeOffset..], (ulong)Size);
        BinaryPrimitives.WriteUInt32BigEndian(destination[CryptMethodOffset..], (uint)CryptMethod);
        BinaryPrimitives.WriteUInt32BigEndian(destination[L1SizeOffset..], (uint)L1Size);
        BinaryPrimitives.WriteUInt64BigEndian(destination[L1TableOffsetOffset..], (ulong)L1TableOffset);
        BinaryPrimitives.WriteUInt64BigEndian(destination[RefcountTableOffsetOffset..], (ulong)RefcountTableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[RefcountTableClustersOffset..], (uint)RefcountTableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(destination[SnapshotCountOffset..], (uint)SnapshotCount);
        BinaryPrimitives.WriteUInt64BigEndian(destination[SnapshotsOffsetOffset..], (ulong)SnapshotsOffset);
        if (Version == 2)
        {
            return length;
        }

        BinaryPrimitives.WriteUInt64BigEndian(destination[IncompatibleFeaturesOffset..], (ulong)Incompatible);
        BinaryPrimitives.WriteUInt64BigEndian(destination[CompatibleFeaturesOffset..], (ulong)Compatible);
        BinaryPrimitives.WriteUInt64BigEndian(destination[AutoclearFeaturesOffset..], (ulong)Autoclear);
        BinaryPrimitives.WriteUInt32BigEndian(destination[RefcountOrderOffset..], (uint)RefcountOrder);
        BinaryPrimitives.WriteUInt32BigEndian(destination[HeaderLengthOffset..], (uint)HeaderLength);
        if (HeaderLength > CompressionTypeOffset)
        {
            destination[CompressionTypeOffset] = (byte)CompressionType;
        }

        if (HeaderLength > Qcow2Layout.V3HeaderLength)
        {
            var unknown = UnknownAdditionalFields.Span;
            unknown[..Math.Min(unknown.Length, HeaderLength - Qcow2Layout.V3HeaderLength)]
                .CopyTo(destination[Qcow2Layout.V3HeaderLength..]);
        }

        return length;
    }

    private static long ReadOffset(ReadOnlySpan<byte> header, int fieldOffset, string field)
    {
        var value = BinaryPrimitives.ReadUInt64BigEndian(header[fieldOffset..]);
        if (value > long.MaxValue)
        {
            throw Qcow2Corruption.Create("header", $"{field} 0x{value:x} is beyond any file", fieldOffset);
        }

        return (long)value;
    }
}
