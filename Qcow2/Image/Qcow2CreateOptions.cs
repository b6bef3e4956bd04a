using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Image;

/// <summary>qemu-img's preallocation modes.</summary>
public enum Preallocation
{
    /// <summary>Allocate nothing up front.</summary>
    Off,

    /// <summary>Allocate L2 tables and data clusters, but not disk space for the data.</summary>
    Metadata,

    /// <summary>As metadata, and reserve disk space for the data (fallocate).</summary>
    Falloc,

    /// <summary>As metadata, and write zeros to every data cluster.</summary>
    Full,
}

/// <summary>Options for <see cref="Qcow2Image.Create(string, Qcow2CreateOptions)"/>, named after qemu-img's -o options.</summary>
public sealed record Qcow2CreateOptions
{
    /// <summary>Virtual size in bytes (a multiple of 512). Null takes the backing file's size.</summary>
    public long? Size { get; init; }

    /// <summary>2 (compat=0.10) or 3 (compat=1.1, the default).</summary>
    public int Version { get; init; } = 3;

    /// <summary>Cluster size: a power of two from 512 B to 2 MiB (default 64 KiB).</summary>
    public int ClusterSize { get; init; } = 65536;

    /// <summary>Refcount width in bits: 1, 2, 4, 8, 16 (default), 32 or 64. Version 2 allows only 16.</summary>
    public int RefcountBits { get; init; } = 16;

    /// <summary>Postpone refcount updates (compat bit), repaired on the next open after a crash.</summary>
    public bool LazyRefcounts { get; init; }

    /// <summary>Use extended L2 entries with 32 subclusters (clusters of at least 16 KiB).</summary>
    public bool ExtendedL2 { get; init; }

    /// <summary>Compression type for compressed clusters.</summary>
    public CompressionType CompressionType { get; init; } = CompressionType.Deflate;

    /// <summary>What to allocate up front.</summary>
    public Preallocation Preallocation { get; init; }

    /// <summary>Backing file name, stored as given (relative names are relative to the new image).</summary>
    public string? BackingFile { get; init; }

    /// <summary>Backing file format ("qcow2" or "raw"); probed from the file when null.</summary>
    public string? BackingFormat { get; init; }

    /// <summary>External data file name; the file is created.</summary>
    public string? DataFile { get; init; }

    /// <summary>Keep the data file a valid raw image of the guest disk (forces metadata preallocation).</summary>
    public bool DataFileRaw { get; init; }

    /// <summary>Opens the backing file to learn its size and format.</summary>
    public IBackingFileResolver BackingResolver { get; init; } = DefaultBackingFileResolver.Instance;

    /// <summary>Options for the image returned by Create (it is always writable).</summary>
    public Qcow2OpenOptions? OpenOptions { get; init; }
}
