namespace QcowDedup.Qcow2.Format;

/// <summary>
/// Incompatible feature bits (header offset 72). An implementation must refuse an image with a set
/// bit it does not know.
/// </summary>
[Flags]
public enum IncompatibleFeatures : ulong
{
    /// <summary>No bits set.</summary>
    None = 0,

    /// <summary>Bit 0: refcounts may be inconsistent; repair before relying on them.</summary>
    Dirty = 1UL << 0,

    /// <summary>Bit 1: the image is corrupt; it may only be written to repair it.</summary>
    Corrupt = 1UL << 1,

    /// <summary>Bit 2: guest data lives in an external data file.</summary>
    ExternalDataFile = 1UL << 2,

    /// <summary>Bit 3: the compression_type field is present and non-zero.</summary>
    CompressionType = 1UL << 3,

    /// <summary>Bit 4: L2 entries are 128 bits wide with subcluster bitmaps.</summary>
    ExtendedL2 = 1UL << 4,

    /// <summary>Every bit this library understands.</summary>
    Known = Dirty | Corrupt | ExternalDataFile | CompressionType | ExtendedL2,
}

/// <summary>Compatible feature bits (header offset 80). Unknown bits are ignored and preserved.</summary>
[Flags]
public enum CompatibleFeatures : ulong
{
    /// <summary>No bits set.</summary>
    None = 0,

    /// <summary>Bit 0: refcount updates may be postponed while the dirty bit is set.</summary>
    LazyRefcounts = 1UL << 0,

    /// <summary>Every bit this library understands.</summary>
    Known = LazyRefcounts,
}

/// <summary>
/// Auto-clear feature bits (header offset 88). A writer that does not know a bit clears it before
/// its first write, which tells the owner of the bit that its data may be stale.
/// </summary>
[Flags]
public enum AutoclearFeatures : ulong
{
    /// <summary>No bits set.</summary>
    None = 0,

    /// <summary>Bit 0: the bitmaps extension is consistent with the image.</summary>
    Bitmaps = 1UL << 0,

    /// <summary>Bit 1: the external data file is a valid raw image on its own.</summary>
    RawExternalData = 1UL << 1,

    /// <summary>Every bit the core library understands (extensions may claim more).</summary>
    Known = Bitmaps | RawExternalData,
}

/// <summary>Which of the three feature fields a feature bit belongs to (feature name table type byte).</summary>
public enum FeatureKind : byte
{
    /// <summary>incompatible_features.</summary>
    Incompatible = 0,

    /// <summary>compatible_features.</summary>
    Compatible = 1,

    /// <summary>autoclear_features.</summary>
    Autoclear = 2,
}

/// <summary>Value of the compression_type header field.</summary>
public enum CompressionType : byte
{
    /// <summary>Raw deflate (QEMU calls it "zlib").</summary>
    Deflate = 0,

    /// <summary>Zstandard.</summary>
    Zstd = 1,
}

/// <summary>Value of the crypt_method header field.</summary>
public enum EncryptionMethod : uint
{
    /// <summary>Not encrypted.</summary>
    None = 0,

    /// <summary>Legacy AES-CBC, deprecated and insecure.</summary>
    Aes = 1,

    /// <summary>LUKS; the header lives at the full disk encryption extension's offset.</summary>
    Luks = 2,
}
