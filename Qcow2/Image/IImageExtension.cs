namespace QcowDedup.Qcow2.Image;

/// <summary>
/// An optional feature that keeps its own data inside an image — in a header extension of its
/// own, guarded by an auto-clear bit it owns, and in host clusters it reserves without
/// refcounting them — and may place data clusters through an <see cref="IClusterAllocator"/>.
/// The core knows extensions only through this interface.
/// </summary>
/// <remarks>
/// Auto-clear semantics: the core keeps the extension's bit when it opens the image read-write
/// with the extension loaded, and clears it (like any writer unaware of the bit, such as QEMU)
/// when the extension is not loaded. An extension that finds its header extension but not its
/// bit must treat its data as stale: never trust it and never touch the clusters it names.
/// All calls except <see cref="IImageExtensionHost.Read"/> happen under the image's metadata lock.
/// </remarks>
public interface IImageExtension
{
    /// <summary>Magic of the extension's header extension.</summary>
    uint HeaderExtensionType { get; }

    /// <summary>The auto-clear feature bit the extension owns (2..63).</summary>
    int AutoclearBit { get; }

    /// <summary>Name written to the feature name table for <see cref="AutoclearBit"/>.</summary>
    string FeatureName { get; }

    /// <summary>The allocator the image should use, or null to keep the default (read once, after <see cref="Open"/>).</summary>
    IClusterAllocator? Allocator { get; }

    /// <summary>
    /// Called once while the image opens, before any write: <paramref name="payload"/> is the
    /// extension's header extension data (null when absent), <paramref name="autoclearBitSet"/>
    /// whether its bit was set on disk.
    /// </summary>
    void Open(IImageExtensionHost host, ReadOnlyMemory<byte>? payload, bool autoclearBitSet);

    /// <summary>Called after the image made its data and metadata durable.</summary>
    void Flush(IImageExtensionHost host);

    /// <summary>Called once before a writable image's final flush.</summary>
    void Close(IImageExtensionHost host);
}

/// <summary>What an image offers its extensions.</summary>
public interface IImageExtensionHost
{
    /// <summary>Whether the image is open for writing.</summary>
    bool IsWritable { get; }

    /// <summary>The image's format version: 2 (compat=0.10, no feature bits) or 3.</summary>
    int FormatVersion { get; }

    /// <summary>Cluster size in bytes.</summary>
    int ClusterSize { get; }

    /// <summary>Guest-visible size of the image.</summary>
    long VirtualSize { get; }

    /// <summary>Refcount width maximum.</summary>
    ulong MaxRefcount { get; }

    /// <summary>Refcount of the host cluster at <paramref name="hostOffset"/>.</summary>
    ulong GetRefcount(long hostOffset);

    /// <summary>Finds <paramref name="count"/> contiguous free clusters, reserves them (their refcount stays 0) and returns the first's offset.</summary>
    long AllocateReservedClusters(long count);

    /// <summary>
    /// Reserves clusters found in the extension's own metadata, so the allocator never hands them
    /// out. Throws <see cref="InvalidDataException"/> when the range is not cluster aligned, overlaps
    /// an earlier reservation or holds a cluster with a nonzero refcount: such metadata is damaged
    /// and must not be trusted.
    /// </summary>
    void ReserveClusters(long hostOffset, long count);

    /// <summary>Gives reserved clusters back to the allocator.</summary>
    void ReleaseClusters(long hostOffset, long count);

    /// <summary>Reads bytes of the image file; may be called from any thread.</summary>
    void Read(long hostOffset, Span<byte> buffer);

    /// <summary>Writes bytes of the image file (only inside the extension's reserved clusters).</summary>
    void Write(long hostOffset, ReadOnlySpan<byte> buffer);

    /// <summary>Makes the image's guest data and metadata durable (its own flush), then flushes the file.</summary>
    void FlushImage();

    /// <summary>Makes the extension's own writes durable.</summary>
    void FlushFile();

    /// <summary>
    /// Runs qemu-img check -r all on the image (refcounts, leaks, COPIED flags), e.g. after another
    /// program wrote it or after a crash. Returns whether the image is clean afterwards.
    /// </summary>
    bool CheckAndRepair();

    /// <summary>Writes the extension's header extension and sets or clears its auto-clear bit (rewrites cluster 0).</summary>
    void SetHeaderExtension(ReadOnlySpan<byte> payload, bool autoclearBitSet);

    /// <summary>
    /// Runs <paramref name="action"/> under the image's metadata lock, so that the extension's own
    /// state changes consistently with the image's mappings: for extension work that starts
    /// outside a callback (an offline pass over the image). Never from inside a callback, which
    /// already holds the lock, and never calling image methods inside: either would deadlock.
    /// </summary>
    T RunLocked<T>(Func<T> action);
}
