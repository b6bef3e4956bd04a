using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// One open image file and what it opened with it: its metadata, the file holding guest data,
/// the backing disk, the loaded extensions and the guest range lock. Shared by the image and the
/// snapshot views opened from it; disposing it closes the whole chain.
/// </summary>
internal sealed class ImageSession : IDisposable
{
    public ImageSession(IStorage file, HeaderCluster header, Qcow2OpenOptions options, bool ownsFile)
    {
        Options = options;
        OwnsFile = ownsFile;
        GuestDataFile = file;
        IReadOnlyList<FeatureName> featureNames = [.. FeatureName.Standard, .. options.Extensions.Select(e => new FeatureName(FeatureKind.Autoclear, e.AutoclearBit, e.FeatureName))];
        Metadata = new ImageMetadata(file, header, (options.L2CacheBytes, options.RefcountCacheBytes), options.Writable, options.ForRepair, featureNames);
    }

    /// <summary>The image file's metadata.</summary>
    public ImageMetadata Metadata { get; }

    /// <summary>The image file.</summary>
    public IStorage File => Metadata.File;

    /// <summary>Where guest data clusters live: the image file, or the external data file.</summary>
    public IStorage GuestDataFile { get; set; }

    public bool OwnsFile { get; }

    public Qcow2OpenOptions Options { get; }

    /// <summary>Guest cluster ranges in use by reads (shared) and writes (exclusive).</summary>
    public RangeLock GuestLock { get; } = new();

    /// <summary>The disk below this one, when backing files are opened.</summary>
    public IGuestDisk? Backing { get; set; }

    /// <summary>Optional features loaded with the image.</summary>
    public IReadOnlyList<IImageExtension> Extensions => Options.Extensions;

    /// <summary>The persistent dirty bitmaps a read-write session keeps (null when read-only or opened for repair).</summary>
    public PersistentBitmaps? Bitmaps { get; set; }

    /// <summary>The most recently decompressed cluster.</summary>
    public DecompressedClusterCache Decompressed { get; } = new();

    /// <summary>Takes the backing disk away from this layer (to close a chain without recursion).</summary>
    public IGuestDisk? DetachBacking()
    {
        var backing = Backing;
        Backing = null;
        return backing;
    }

    public void Dispose()
    {
        // A chain may be 1,024 files deep: close it layer by layer, each detached from the one
        // below first, so that no thread needs stack for the whole chain to close it.
        var backing = DetachBacking();
        while (backing is not null)
        {
            var below = backing is Qcow2Image layer ? layer.Session.DetachBacking() : null;
            backing.Dispose();
            backing = below;
        }

        if (!ReferenceEquals(GuestDataFile, File))
        {
            GuestDataFile.Dispose();
        }

        if (OwnsFile)
        {
            File.Dispose();
        }

        Metadata.MetadataLock.Dispose();
    }
}

/// <summary>
/// Remembers the most recently decompressed cluster, so that small sequential reads through a
/// compressed cluster decompress it once rather than once per read.
/// </summary>
internal sealed class DecompressedClusterCache
{
    private readonly Lock _sync = new();
    private ulong _entry;
    private byte[]? _data;

    public bool TryCopy(L2Entry entry, int offsetInCluster, Span<byte> destination)
    {
        lock (_sync)
        {
            if (_data is null || _entry != entry.Raw)
            {
                return false;
            }

            _data.AsSpan(offsetInCluster, destination.Length).CopyTo(destination);
            return true;
        }
    }

    public void Store(L2Entry entry, ReadOnlySpan<byte> cluster)
    {
        lock (_sync)
        {
            if (_data is null || _data.Length != cluster.Length)
            {
                _data = new byte[cluster.Length];
            }

            cluster.CopyTo(_data);
            _entry = entry.Raw;
        }
    }

    /// <summary>Forgets the cached cluster (its host bytes may be reused).</summary>
    public void Invalidate()
    {
        lock (_sync)
        {
            _entry = 0;
        }
    }
}
