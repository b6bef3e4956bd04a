namespace QcowDedup.Qcow2.Image;

/// <summary>What <see cref="Qcow2Image.Amend"/> changes (qemu-img amend -o); null leaves a property as it is.</summary>
public sealed record Qcow2AmendOptions
{
    /// <summary>Format version: 2 (compat=0.10) or 3 (compat=1.1).</summary>
    public int? Version { get; init; }

    /// <summary>Refcount entry width: a power of two from 1 to 64.</summary>
    public int? RefcountBits { get; init; }

    /// <summary>Postpone refcount updates (v3 only).</summary>
    public bool? LazyRefcounts { get; init; }

    /// <summary>New virtual size (growing; shrinking needs <see cref="AllowShrink"/>).</summary>
    public long? Size { get; init; }

    /// <summary>Allow <see cref="Size"/> to shrink the disk.</summary>
    public bool AllowShrink { get; init; }

    /// <summary>
    /// New name of the external data file (an image that has one only): the header is rewritten,
    /// the file itself is neither opened nor moved, as with qemu-img amend -o data_file=.
    /// </summary>
    public string? DataFile { get; init; }

    /// <summary>
    /// data_file_raw: false clears the "data file is a valid raw image" bit; true is refused, as
    /// qemu-img refuses it, unless the bit is set already (an existing data file cannot be vouched for).
    /// </summary>
    public bool? DataFileRaw { get; init; }
}
