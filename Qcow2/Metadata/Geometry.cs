using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The index arithmetic of one image, derived once from the header: cluster, subcluster and L2
/// sizes, guest offset → L1/L2 index, refcount block coverage.
/// </summary>
internal sealed class Geometry
{
    public Geometry(Qcow2Header header)
    {
        ClusterBits = header.ClusterBits;
        ClusterSize = 1 << ClusterBits;
        ExtendedL2 = header.HasExtendedL2;
        ExternalDataFile = header.HasExternalDataFile;
        L2EntrySize = header.L2EntrySize;
        L2Bits = ClusterBits - (ExtendedL2 ? 4 : 3);
        L2Entries = 1 << L2Bits;
        L2CoverageBits = ClusterBits + L2Bits;
        SubclusterBits = ExtendedL2 ? ClusterBits - 5 : ClusterBits;
        SubclusterSize = 1 << SubclusterBits;
        RefcountOrder = header.RefcountOrder;
        RefcountBlockBits = ClusterBits + 3 - RefcountOrder;
        RefcountBlockEntries = 1 << RefcountBlockBits;
        MaxRefcount = RefcountBlock.MaxRefcount(RefcountOrder);
    }

    public int ClusterBits { get; }

    public int ClusterSize { get; }

    public bool ExtendedL2 { get; }

    public bool ExternalDataFile { get; }

    public int L2EntrySize { get; }

    public int L2Bits { get; }

    public int L2Entries { get; }

    public int L2CoverageBits { get; }

    public long L2Coverage => 1L << L2CoverageBits;

    public int SubclusterBits { get; }

    public int SubclusterSize { get; }

    /// <summary>Subclusters per cluster: 32 with extended L2, else 1.</summary>
    public int SubclustersPerCluster => ExtendedL2 ? Qcow2Layout.SubclustersPerCluster : 1;

    public int RefcountOrder { get; }

    public int RefcountBlockBits { get; }

    public int RefcountBlockEntries { get; }

    public ulong MaxRefcount { get; }

    public long OffsetInCluster(long offset) => offset & (ClusterSize - 1);

    public long StartOfCluster(long offset) => offset & ~(long)(ClusterSize - 1);

    public long ClusterIndex(long offset) => offset >> ClusterBits;

    public bool IsClusterAligned(long offset) => (offset & (ClusterSize - 1)) == 0;

    public long L1Index(long guestOffset) => guestOffset >> L2CoverageBits;

    public int L2Index(long guestOffset) => (int)((guestOffset >> ClusterBits) & (L2Entries - 1));

    public int SubclusterIndex(long guestOffset) => ExtendedL2 ? (int)((guestOffset >> SubclusterBits) & 31) : 0;

    /// <summary>Guest bytes from <paramref name="guestOffset"/> to the end of its L2 table's range.</summary>
    public long BytesToL2End(long guestOffset) => L2Coverage - (guestOffset & (L2Coverage - 1));

    /// <summary>Clusters needed to hold <paramref name="bytes"/> bytes.</summary>
    public long ClustersFor(long bytes) => (bytes + ClusterSize - 1) >> ClusterBits;

    public long RoundUpToCluster(long bytes) => ClustersFor(bytes) << ClusterBits;
}
