namespace QcowDedup.Qcow2.Format;

/// <summary>How a guest cluster is mapped (QEMU's QCow2ClusterType).</summary>
public enum ClusterType
{
    /// <summary>No host cluster: reads come from the backing file, or zeros without one.</summary>
    Unallocated,

    /// <summary>Reads as zeros; no host cluster.</summary>
    ZeroPlain,

    /// <summary>Reads as zeros; a preallocated host cluster is kept.</summary>
    ZeroAllocated,

    /// <summary>Data in a host cluster.</summary>
    Normal,

    /// <summary>Compressed data at a byte offset in the image file.</summary>
    Compressed,
}

/// <summary>How one subcluster is mapped (QEMU's QCow2SubclusterType). Without extended L2 entries
/// every subcluster of a cluster has the cluster's type.</summary>
public enum SubclusterType
{
    /// <summary>No host cluster and not allocated: backing file or zeros.</summary>
    UnallocatedPlain,

    /// <summary>The cluster has a host cluster but this subcluster is not allocated: backing file or zeros.</summary>
    UnallocatedAllocated,

    /// <summary>Reads as zeros, no host cluster.</summary>
    ZeroPlain,

    /// <summary>Reads as zeros, host cluster kept.</summary>
    ZeroAllocated,

    /// <summary>Data at the host cluster.</summary>
    Normal,

    /// <summary>Compressed cluster.</summary>
    Compressed,

    /// <summary>Contradictory bitmap bits (allocated and zero, or allocated without a host cluster).</summary>
    Invalid,
}
