namespace QcowDedup.Qcow2.Format;

/// <summary>
/// QEMU's open-time rules for a header (block/qcow2.c, qcow2_do_open): ranges of every field,
/// alignment of every table, the table size limits, and the meaning of feature bits.
/// </summary>
public static class HeaderValidator
{
    /// <summary>
    /// Checks the numeric fields and table locations of <paramref name="cluster"/>.
    /// </summary>
    /// <exception cref="InvalidDataException">A field is out of range or a table is misplaced.</exception>
    /// <exception cref="NotSupportedException">The image uses a feature this library cannot handle.</exception>
    public static void ValidateLayout(HeaderCluster cluster)
    {
        var header = cluster.Header;
        if (header.ClusterBits is < Qcow2Layout.MinClusterBits or > Qcow2Layout.MaxClusterBits)
        {
            throw Qcow2Corruption.Create("header", $"cluster_bits {header.ClusterBits} is outside {Qcow2Layout.MinClusterBits}..{Qcow2Layout.MaxClusterBits}", Qcow2Header.ClusterBitsOffset);
        }

        if (header.RefcountOrder > Qcow2Layout.MaxRefcountOrder)
        {
            throw Qcow2Corruption.Create("header", $"refcount_order {header.RefcountOrder} exceeds {Qcow2Layout.MaxRefcountOrder} (64-bit refcounts)", Qcow2Header.RefcountOrderOffset);
        }

        if (header.Version == 2 && header.RefcountOrder != Qcow2Layout.V2RefcountOrder)
        {
            throw Qcow2Corruption.Create("header", "version 2 images must use 16-bit refcounts", Qcow2Header.RefcountOrderOffset);
        }

        if (header.HasExtendedL2 && header.ClusterBits < Qcow2Layout.MinExtendedL2ClusterBits)
        {
            throw Qcow2Corruption.Create("header", $"extended L2 entries need clusters of at least {1 << Qcow2Layout.MinExtendedL2ClusterBits} bytes, not {header.ClusterSize}", Qcow2Header.ClusterBitsOffset);
        }

        var clusterSize = header.ClusterSize;
        var requiredL1 = header.RequiredL1Size;
        if (requiredL1 > Qcow2Layout.MaxL1TableBytes / Qcow2Layout.L1EntrySize)
        {
            throw Qcow2Corruption.Create("header", $"virtual size {header.Size} needs an L1 table larger than QEMU's {Qcow2Layout.MaxL1TableBytes >> 20} MiB limit", Qcow2Header.SizeOffset);
        }

        ValidateTable("active L1 table", header.L1TableOffset, (long)header.L1Size * Qcow2Layout.L1EntrySize, Qcow2Layout.MaxL1TableBytes, clusterSize, Qcow2Header.L1TableOffsetOffset);
        if (header.L1Size < requiredL1)
        {
            throw Qcow2Corruption.Create("header", $"l1_size {header.L1Size} cannot map the virtual size {header.Size} (needs {requiredL1} entries)", Qcow2Header.L1SizeOffset);
        }

        if (header.RefcountTableClusters == 0)
        {
            throw Qcow2Corruption.Create("header", "the image has no refcount table (refcount_table_clusters is 0)", Qcow2Header.RefcountTableClustersOffset);
        }

        ValidateTable("refcount table", header.RefcountTableOffset, (long)header.RefcountTableClusters * clusterSize, Qcow2Layout.MaxRefcountTableBytes, clusterSize, Qcow2Header.RefcountTableOffsetOffset);

        if (header.SnapshotCount > Qcow2Layout.MaxSnapshots)
        {
            throw Qcow2Corruption.Create("header", $"nb_snapshots {header.SnapshotCount} exceeds QEMU's limit of {Qcow2Layout.MaxSnapshots}", Qcow2Header.SnapshotCountOffset);
        }

        if (header.SnapshotCount > 0)
        {
            ValidateTable("snapshot table", header.SnapshotsOffset, 0, Qcow2Layout.MaxSnapshotTableBytes, clusterSize, Qcow2Header.SnapshotsOffsetOffset);
        }

        if ((uint)header.CryptMethod > (uint)EncryptionMethod.Luks)
        {
            throw new NotSupportedException($"qcow2 encryption method {(uint)header.CryptMethod} is unknown.");
        }

        if ((cluster.EncryptionHeader is not null) != (header.CryptMethod == EncryptionMethod.Luks))
        {
            throw Qcow2Corruption.Create("header", "a full disk encryption extension must exist exactly when crypt_method is LUKS", Qcow2Header.CryptMethodOffset);
        }

        var compressionBit = (header.Incompatible & IncompatibleFeatures.CompressionType) != 0;
        if ((header.CompressionType != CompressionType.Deflate) != compressionBit)
        {
            throw Qcow2Corruption.Create("header", compressionBit
                ? "the compression type feature bit is set but compression_type is zlib"
                : $"compression_type {(byte)header.CompressionType} needs the compression type feature bit", Qcow2Header.IncompatibleFeaturesOffset);
        }

        if (header.CompressionType > CompressionType.Zstd)
        {
            throw new NotSupportedException($"qcow2 compression type {(byte)header.CompressionType} is unknown.");
        }

        if ((header.Autoclear & AutoclearFeatures.RawExternalData) != 0 && !header.HasExternalDataFile)
        {
            throw Qcow2Corruption.Create("header", "the raw external data bit is set without an external data file", Qcow2Header.AutoclearFeaturesOffset);
        }
    }

    /// <summary>
    /// Refuses unknown incompatible bits, naming each from the image's feature name table the way
    /// QEMU does ("Unknown incompatible feature: 200" when the table has no name for it).
    /// </summary>
    /// <exception cref="NotSupportedException">An unknown incompatible bit is set.</exception>
    public static void ValidateIncompatibleFeatures(HeaderCluster cluster)
    {
        var unknown = (ulong)(cluster.Header.Incompatible & ~IncompatibleFeatures.Known);
        if (unknown == 0)
        {
            return;
        }

        var names = new List<string>();
        for (var bit = 0; bit < 64; bit++)
        {
            if ((unknown & (1UL << bit)) != 0)
            {
                var name = cluster.NameOf(FeatureKind.Incompatible, bit);
                names.Add(name is null ? $"Unknown incompatible feature: {1UL << bit:x}" : $"{name} (incompatible bit {bit})");
            }
        }

        throw new NotSupportedException($"Unsupported qcow2 feature(s): {string.Join(", ", names)}");
    }

    private static void ValidateTable(string name, long offset, long bytes, long maxBytes, int clusterSize, int fieldOffset)
    {
        if (bytes > maxBytes)
        {
            throw Qcow2Corruption.Create("header", $"{name} of {bytes} bytes exceeds QEMU's limit of {maxBytes} bytes", fieldOffset);
        }

        if ((offset & (clusterSize - 1)) != 0)
        {
            throw Qcow2Corruption.Create("header", $"{name} offset 0x{offset:x} is not cluster aligned", fieldOffset);
        }

        if (long.MaxValue - bytes < offset)
        {
            throw Qcow2Corruption.Create("header", $"{name} offset 0x{offset:x} is out of range", fieldOffset);
        }
    }
}
