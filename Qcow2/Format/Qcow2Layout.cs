namespace QcowDedup.Qcow2.Format;

/// <summary>
/// Sizes and limits of the qcow2 on-disk layout (docs/interop/qcow2.rst), plus the implementation
/// limits QEMU applies when it opens an image (block/qcow2.h). Values are derived from each other
/// where the spec derives them.
/// </summary>
public static class Qcow2Layout
{
    /// <summary>"QFI\xfb" at offset 0 of every qcow2 image.</summary>
    public const uint Magic = 0x514649FB;

    /// <summary>Smallest cluster size the spec allows (512 bytes).</summary>
    public const int MinClusterBits = 9;

    /// <summary>Largest cluster size QEMU accepts (2 MiB).</summary>
    public const int MaxClusterBits = 21;

    /// <summary>Extended L2 entries need clusters of at least 16 KiB (32 subclusters of 512 bytes).</summary>
    public const int MinExtendedL2ClusterBits = 14;

    /// <summary>Version 2 headers are always 72 bytes long.</summary>
    public const int V2HeaderLength = 72;

    /// <summary>Version 3 headers are at least this long (up to and including header_length).</summary>
    public const int V3MinHeaderLength = 104;

    /// <summary>The v3 header QEMU writes: the 104 fixed bytes, compression_type and 7 bytes of padding.</summary>
    public const int V3HeaderLength = 112;

    /// <summary>Longest backing file name QEMU accepts.</summary>
    public const int MaxBackingFileNameLength = 1023;

    /// <summary>refcount_order above 6 (64-bit refcounts) is invalid.</summary>
    public const int MaxRefcountOrder = 6;

    /// <summary>v2 images always use 16-bit refcounts.</summary>
    public const int V2RefcountOrder = 4;

    /// <summary>Bytes per disk sector; compressed cluster sizes are counted in these.</summary>
    public const int SectorSize = 512;

    /// <summary>Width of one L1 table entry.</summary>
    public const int L1EntrySize = sizeof(ulong);

    /// <summary>Width of one standard L2 table entry.</summary>
    public const int L2EntrySize = sizeof(ulong);

    /// <summary>Width of one extended L2 entry: the standard descriptor plus the subcluster bitmap.</summary>
    public const int ExtendedL2EntrySize = 2 * sizeof(ulong);

    /// <summary>Width of one refcount table entry.</summary>
    public const int RefcountTableEntrySize = sizeof(ulong);

    /// <summary>Number of subclusters per cluster with extended L2 entries.</summary>
    public const int SubclustersPerCluster = 32;

    /// <summary>QEMU refuses active or snapshot L1 tables larger than this.</summary>
    public const long MaxL1TableBytes = 32L << 20;

    /// <summary>QEMU refuses refcount tables larger than this.</summary>
    public const long MaxRefcountTableBytes = 8L << 20;

    /// <summary>QEMU refuses images with more internal snapshots than this.</summary>
    public const int MaxSnapshots = 65536;

    /// <summary>QEMU refuses snapshot tables larger than this.</summary>
    public const long MaxSnapshotTableBytes = 64L << 20;

    /// <summary>QEMU ignores snapshot extra data beyond this many bytes per entry.</summary>
    public const int MaxSnapshotExtraDataSize = 1024;

    /// <summary>Offsets in L1/L2/refcount-table entries cover bits 9..55.</summary>
    public const long MaxHostOffset = (1L << 56) - 1;

    /// <summary>Cluster size for a given cluster_bits.</summary>
    public static int ClusterSize(int clusterBits) => 1 << clusterBits;
}
