namespace QcowDedup.Qcow2.Format;

/// <summary>
/// Where a compressed cluster's bytes are (spec "Compressed Clusters Descriptor"). With
/// x = 62 − (cluster_bits − 8), bits 0..x−1 hold the host byte offset and bits x..61 the number
/// of 512-byte sectors after the first one.
/// </summary>
/// <param name="HostOffset">Byte offset of the compressed data in the image file.</param>
/// <param name="SectorCount">Sectors touched by the compressed data (the field plus one).</param>
public readonly record struct CompressedClusterDescriptor(long HostOffset, int SectorCount)
{
    /// <summary>
    /// Bytes QEMU reads for the cluster: whole sectors from the one holding the first byte, minus
    /// the part of the first sector before it. Decompression stops once a cluster is produced.
    /// </summary>
    public int CompressedLength => (SectorCount * Qcow2Layout.SectorSize) - (int)(HostOffset & (Qcow2Layout.SectorSize - 1));

    /// <summary>First bit of the sector count field for a cluster size.</summary>
    public static int SizeShift(int clusterBits) => 62 - (clusterBits - 8);

    /// <summary>Width mask of the sector count field.</summary>
    public static ulong SizeMask(int clusterBits) => (1UL << (clusterBits - 8)) - 1;

    /// <summary>Mask of the byte offset field.</summary>
    public static ulong OffsetMask(int clusterBits) => (1UL << SizeShift(clusterBits)) - 1;

    /// <summary>Decodes the descriptor of a compressed L2 entry.</summary>
    public static CompressedClusterDescriptor Decode(L2Entry entry, int clusterBits)
    {
        var shift = SizeShift(clusterBits);
        var offset = entry.Raw & OffsetMask(clusterBits);
        var additional = (entry.Raw >> shift) & SizeMask(clusterBits);
        return new CompressedClusterDescriptor((long)offset, (int)additional + 1);
    }

    /// <summary>
    /// Builds the L2 entry for <paramref name="compressedLength"/> bytes stored at
    /// <paramref name="hostOffset"/> (QEMU's qcow2_alloc_compressed_cluster_offset).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The data does not fit the descriptor.</exception>
    public static L2Entry Encode(long hostOffset, int compressedLength, int clusterBits)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(compressedLength);
        var shift = SizeShift(clusterBits);
        var additional = (ulong)(((hostOffset + compressedLength - 1) >> 9) - (hostOffset >> 9));
        if ((ulong)hostOffset > OffsetMask(clusterBits) || additional > SizeMask(clusterBits))
        {
            throw new ArgumentOutOfRangeException(nameof(compressedLength), $"{compressedLength} compressed bytes at 0x{hostOffset:x} do not fit a descriptor for {1 << clusterBits}-byte clusters.");
        }

        return new L2Entry((ulong)hostOffset | L2Entry.CompressedFlag | (additional << shift));
    }
}
