using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// A run of guest bytes inside one L2 table that share a subcluster type and, where they have
/// host clusters, are contiguous on the host.
/// </summary>
/// <param name="GuestOffset">First guest byte.</param>
/// <param name="Length">Bytes in the run.</param>
/// <param name="Type">Subcluster type of every byte (the cluster type without extended L2).</param>
/// <param name="HostOffset">Host byte of <paramref name="GuestOffset"/> for types with a host cluster, else −1.</param>
/// <param name="Entry">The L2 descriptor of the run's first cluster (compressed runs need it).</param>
internal readonly record struct MappingRun(long GuestOffset, long Length, SubclusterType Type, long HostOffset, L2Entry Entry)
{
    public long End => GuestOffset + Length;

    /// <summary>Whether the bytes come from this image's data (normal or compressed clusters).</summary>
    public bool HasData => Type is SubclusterType.Normal or SubclusterType.Compressed;

    /// <summary>Whether the bytes read as zeros because of this image's metadata.</summary>
    public bool IsZero => Type is SubclusterType.ZeroPlain or SubclusterType.ZeroAllocated;

    /// <summary>Whether the bytes fall through to the backing file.</summary>
    public bool IsUnallocated => Type is SubclusterType.UnallocatedPlain or SubclusterType.UnallocatedAllocated;
}
