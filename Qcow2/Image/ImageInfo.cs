using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Image;

/// <summary>Facts about an open image, as qemu-img info reports them.</summary>
public sealed record ImageInfo
{
    /// <summary>Path of the image file, when it has one.</summary>
    public string? FileName { get; init; }

    /// <summary>Guest-visible size in bytes.</summary>
    public required long VirtualSize { get; init; }

    /// <summary>Cluster size in bytes.</summary>
    public required int ClusterSize { get; init; }

    /// <summary>qcow2 version: 2 or 3.</summary>
    public required int Version { get; init; }

    /// <summary>"0.10" for version 2, "1.1" for version 3 (qemu-img's compat names).</summary>
    public string Compat => Version == 2 ? "0.10" : "1.1";

    /// <summary>Refcount width in bits.</summary>
    public required int RefcountBits { get; init; }

    /// <summary>Compression type of compressed clusters.</summary>
    public required CompressionType CompressionType { get; init; }

    /// <summary>Incompatible feature bits.</summary>
    public required IncompatibleFeatures IncompatibleFeatures { get; init; }

    /// <summary>Compatible feature bits.</summary>
    public required CompatibleFeatures CompatibleFeatures { get; init; }

    /// <summary>Auto-clear feature bits.</summary>
    public required AutoclearFeatures AutoclearFeatures { get; init; }

    /// <summary>Whether lazy refcounts are enabled.</summary>
    public bool LazyRefcounts => (CompatibleFeatures & CompatibleFeatures.LazyRefcounts) != 0;

    /// <summary>Whether extended L2 entries are used.</summary>
    public bool ExtendedL2 => (IncompatibleFeatures & IncompatibleFeatures.ExtendedL2) != 0;

    /// <summary>Whether the corrupt bit is set.</summary>
    public bool Corrupt => (IncompatibleFeatures & IncompatibleFeatures.Corrupt) != 0;

    /// <summary>Whether the dirty bit is set.</summary>
    public bool Dirty => (IncompatibleFeatures & IncompatibleFeatures.Dirty) != 0;

    /// <summary>Unknown incompatible bits are never here (such images do not open).</summary>
    public ulong UnknownCompatibleBits => (ulong)(CompatibleFeatures & ~CompatibleFeatures.Known);

    /// <summary>Auto-clear bits owned by extensions loaded with the image.</summary>
    public ulong ExtensionAutoclearBits { get; init; }

    /// <summary>Auto-clear bits neither the core nor a loaded extension knows.</summary>
    public ulong UnknownAutoclearBits => (ulong)(AutoclearFeatures & ~AutoclearFeatures.Known) & ~ExtensionAutoclearBits;

    /// <summary>Encryption method.</summary>
    public EncryptionMethod Encryption { get; init; }

    /// <summary>Backing file name as stored.</summary>
    public string? BackingFileName { get; init; }

    /// <summary>Backing file format as stored.</summary>
    public string? BackingFormat { get; init; }

    /// <summary>External data file name, when the image has one.</summary>
    public string? DataFile { get; init; }

    /// <summary>Whether the external data file is a valid raw image.</summary>
    public bool DataFileRaw => (AutoclearFeatures & AutoclearFeatures.RawExternalData) != 0;

    /// <summary>Bytes the image file occupies on disk.</summary>
    public long ActualSize { get; init; }

    /// <summary>Header extensions neither the core nor a loaded extension interprets, kept verbatim.</summary>
    public IReadOnlyList<HeaderExtension> UnknownExtensions { get; init; } = [];

    /// <summary>The image's feature name table.</summary>
    public IReadOnlyList<FeatureName> FeatureNames { get; init; } = [];
}

/// <summary>One file of a backing chain, starting with the image itself at depth 0.</summary>
/// <param name="Depth">0 for the image itself, 1 for its backing file, …</param>
/// <param name="Name">Name as stored in the referring image (the image's own path at depth 0).</param>
/// <param name="Format">"qcow2" or "raw".</param>
/// <param name="Path">Full path the name resolved to, when known.</param>
/// <param name="VirtualSize">Size of that layer.</param>
public sealed record BackingChainEntry(int Depth, string Name, string Format, string? Path, long VirtualSize);
