using DiscUtils;
using DiscUtils.Streams;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// A qcow2 image as a DiscUtils <see cref="VirtualDisk"/>: partition it, format it and read its file
/// systems with DiscUtils. <see cref="Content"/> reads through the whole backing chain and reports the
/// stored extents; writes go to the top image (with deduplication when the image has a dedup index).
/// <c>VirtualDisk.OpenDisk("x.qcow2", …)</c> returns one of these once <see cref="Qcow2DiscUtils.Register"/> ran.
/// </summary>
public sealed class Qcow2Disk : VirtualDisk
{
    private readonly Qcow2Image _image;
    private readonly bool _ownsImage;
    private Qcow2ContentStream? _content;
    private List<Qcow2DiskLayer>? _layers;
    private bool _disposed;

    /// <summary>Wraps an open image; <paramref name="ownsImage"/> says whether disposing the disk closes it.</summary>
    public Qcow2Disk(Qcow2Image image, Ownership ownsImage)
    {
        ArgumentNullException.ThrowIfNull(image);
        _image = image;
        _ownsImage = ownsImage == Ownership.Dispose;
    }

    /// <summary>The image underneath, for everything qcow2-specific (snapshots, check, dedup statistics).</summary>
    public Qcow2Image Image => _image;

    /// <inheritdoc />
    public override Geometry Geometry => Geometry.FromCapacity(Capacity);

    /// <inheritdoc />
    public override VirtualDiskClass DiskClass => VirtualDiskClass.HardDisk;

    /// <inheritdoc />
    public override long Capacity => _image.Size;

    /// <summary>The guest disk through the whole chain; its extents are the ranges some layer stores.</summary>
    public override SparseStream Content
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _content ??= new Qcow2ContentStream(_image, ownsImage: false);
        }
    }

    /// <summary>This image and then each backing file, top to bottom (each opened alone, read-only).</summary>
    public override IEnumerable<VirtualDiskLayer> Layers
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _layers ??= Qcow2DiskLayer.ForChain(_image);
        }
    }

    /// <inheritdoc />
    public override VirtualDiskTypeInfo DiskTypeInfo => Qcow2DiskFactory.TypeInfo(IsDedup ? "dedup" : "dynamic");

    /// <summary>DiscUtils' parameters plus the qcow2 ones, under qemu-img's -o names.</summary>
    public override VirtualDiskParameters Parameters
    {
        get
        {
            var parameters = base.Parameters;
            var info = _image.Info;
            parameters.ExtendedParameters["cluster_size"] = info.ClusterSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
            parameters.ExtendedParameters["compat"] = info.Compat;
            parameters.ExtendedParameters["compression_type"] = info.CompressionType == CompressionType.Zstd ? "zstd" : "zlib";
            parameters.ExtendedParameters["dedup"] = IsDedup ? "on" : "off";
            if (info.BackingFileName is { } backing)
            {
                parameters.ExtendedParameters["backing_file"] = backing;
            }

            return parameters;
        }
    }

    private bool IsDedup => _image.GetExtension<DedupExtension>() is { State: not DedupIndexState.Absent };

    /// <summary>
    /// Opens the image at <paramref name="path"/> with its backing chain. Read-write opens keep an
    /// existing dedup index working; <paramref name="options"/> replaces the defaults entirely.
    /// </summary>
    public static Qcow2Disk Open(string path, FileAccess access, Qcow2OpenOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        return new Qcow2Disk(Qcow2Image.Open(path, options ?? DefaultOpenOptions(access)), Ownership.Dispose);
    }

    /// <summary>Creates a new image (fails if <paramref name="path"/> exists) and opens it read-write.</summary>
    public static Qcow2Disk Create(string path, Qcow2CreateOptions options)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(options);
        if (File.Exists(path))
        {
            throw new IOException($"Could not create {path}: the file exists (delete it first; creating would destroy its contents).");
        }

        return new Qcow2Disk(Qcow2Image.Create(path, options), Ownership.Dispose);
    }

    /// <summary>Open options the adapter uses by default: an existing dedup index is loaded, none is started.</summary>
    public static Qcow2OpenOptions DefaultOpenOptions(FileAccess access) =>
        new Qcow2OpenOptions { Writable = access != FileAccess.Read }.WithDedup(new DedupOptions { Enable = false });

    /// <summary>
    /// Creates a qcow2 overlay at <paramref name="path"/> whose backing file is this image. This disk
    /// must be open read-only: the overlay reads it, and it must not change underneath the overlay.
    /// </summary>
    public override VirtualDisk CreateDifferencingDisk(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var own = OverlayBase();
        var overlay = Path.GetFullPath(path);
        var name = Path.GetDirectoryName(overlay) == Path.GetDirectoryName(own) ? Path.GetFileName(own) : own;
        return Create(overlay, new Qcow2CreateOptions { Size = Capacity, BackingFile = name, BackingFormat = "qcow2" });
    }

    /// <summary>Creates a qcow2 overlay inside a DiscUtils file system, naming this image (in the same file system) as backing file.</summary>
    public override VirtualDisk CreateDifferencingDisk(DiscFileSystem fileSystem, string path)
    {
        ArgumentNullException.ThrowIfNull(fileSystem);
        ArgumentNullException.ThrowIfNull(path);
        var own = OverlayBase();
        var split = path.LastIndexOf('\\');
        var locator = new FileSystemLocator(fileSystem, split < 0 ? string.Empty : path[..split]);
        return Qcow2DiskFactory.CreateOnLocator(locator, path[(split + 1)..], new Qcow2CreateOptions
        {
            Size = Capacity,
            BackingFile = Path.GetFileName(own),
            BackingFormat = "qcow2",
        });
    }

    private string OverlayBase()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_image.IsWritable)
        {
            throw new InvalidOperationException(
                $"{_image.FilePath} is open for writing; an overlay reads its backing file, which must not change underneath it. " +
                "Dispose this disk, open it read-only (FileAccess.Read) and create the overlay from that.");
        }

        return _image.FilePath ?? throw new NotSupportedException("This image has no file path, so an overlay cannot name it as its backing file.");
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            _content?.Dispose();
            if (_layers is not null)
            {
                foreach (var layer in _layers)
                {
                    layer.Dispose();
                }
            }

            if (_ownsImage)
            {
                _image.Dispose();
            }
        }

        base.Dispose(disposing);
    }
}
