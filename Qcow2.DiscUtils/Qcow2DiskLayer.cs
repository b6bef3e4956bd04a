using DiscUtils;
using DiscUtils.Streams;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// One file of a qcow2 backing chain as a DiscUtils <see cref="VirtualDiskLayer"/>: what this file
/// decides (its data and zero clusters), with everything else read from the parent layer given to
/// <see cref="OpenContent"/>. A raw backing file decides every byte.
/// </summary>
public sealed class Qcow2DiskLayer : VirtualDiskLayer
{
    private readonly Qcow2Image? _image;
    private readonly DiskSource _source;
    private readonly bool _owned;

    private Qcow2DiskLayer(Qcow2Image? image, DiskSource source, string? path, bool owned)
    {
        _image = image;
        _source = source;
        FullPath = path ?? string.Empty;
        _owned = owned;
    }

    /// <inheritdoc />
    public override long Capacity => _source.Size;

    /// <inheritdoc />
    public override string FullPath { get; }

    /// <inheritdoc />
    public override Geometry Geometry => Geometry.FromCapacity(Capacity);

    /// <inheritdoc />
    public override bool IsSparse => true;

    /// <summary>Whether the file names a backing file that supplies its unallocated clusters.</summary>
    public override bool NeedsParent => _image?.Info.BackingFileName is not null;

    /// <inheritdoc />
    public override FileLocator RelativeFileLocator =>
        new LocalLocator(FullPath.Length > 0 ? Path.GetDirectoryName(FullPath)! : Environment.CurrentDirectory);

    /// <summary>"qcow2" or "raw".</summary>
    public string Format => _source.Format;

    /// <summary>Opens the qcow2 or raw file at <paramref name="path"/> alone (no backing files), read-only.</summary>
    public static Qcow2DiskLayer Open(string path)
    {
        var source = DiskSource.Open(path, options: new Qcow2OpenOptions { BackingFiles = BackingFileMode.Ignore });
        return new Qcow2DiskLayer(source.Image, source, Path.GetFullPath(path), owned: true);
    }

    /// <summary>The layers of an open image's chain: the image itself (not owned) and each backing file opened alone.</summary>
    internal static List<Qcow2DiskLayer> ForChain(Qcow2Image top)
    {
        var layers = new List<Qcow2DiskLayer> { new(top, DiskSource.FromImage(top, leaveOpen: true), top.FilePath, owned: false) };
        try
        {
            foreach (var link in top.BackingChain.Skip(1))
            {
                layers.Add(link.Path is { } path
                    ? Open(path)
                    : throw new NotSupportedException($"The backing file '{link.Name}' has no local path to open as a layer."));
            }
        }
        catch
        {
            foreach (var layer in layers)
            {
                layer.Dispose();
            }

            throw;
        }

        return layers;
    }

    /// <summary>The backing file's name as stored, and the path it resolves to.</summary>
    public override string[] GetParentLocations()
    {
        if (_image?.Info.BackingFileName is not { } name)
        {
            return [];
        }

        var resolved = DefaultBackingFileResolver.TryResolvePath(name, FullPath.Length > 0 ? FullPath : null);
        return resolved is null || resolved == name ? [name] : [name, resolved];
    }

    /// <summary>A read-only view: this file's clusters, and <paramref name="parent"/> (or zeros) for the rest.</summary>
    public override SparseStream OpenContent(SparseStream parent, Ownership ownsParent) =>
        new LayerStream(this, parent, ownsParent == Ownership.Dispose);

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && _owned)
        {
            _source.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>Ranges of [offset, offset + length) this file decides, and whether each holds data (false: zeros).</summary>
    private List<(long Start, long Length, bool Data)> Decided(long offset, long length)
    {
        if (_image is null)
        {
            return [(offset, length, true)];
        }

        var decided = new List<(long, long, bool)>();
        foreach (var extent in _image.GetExtents(offset, length))
        {
            if (extent.Kind is ExtentKind.Allocated or ExtentKind.Zero)
            {
                decided.Add((extent.Start, extent.Length, extent.Kind == ExtentKind.Allocated));
            }
        }

        return decided;
    }

    private sealed class LayerStream(Qcow2DiskLayer layer, SparseStream? parent, bool ownsParent) : SparseStream
    {
        private long _position;

        public override bool CanRead => true;

        public override bool CanSeek => true;

        public override bool CanWrite => false;

        public override long Length => layer.Capacity;

        public override long Position
        {
            get => _position;
            set => _position = value;
        }

        public override IEnumerable<StreamExtent> Extents => GetExtentsInRange(0, Length);

        public override IEnumerable<StreamExtent> GetExtentsInRange(long start, long count)
        {
            var decided = layer.Decided(start, Math.Min(count, Length - start));
            var own = decided.Where(d => d.Data).Select(d => new StreamExtent(d.Start, d.Length));
            if (parent is null)
            {
                return own.ToList();
            }

            var masked = StreamExtent.Subtract(parent.GetExtentsInRange(start, count), decided.Select(d => new StreamExtent(d.Start, d.Length)));
            return StreamExtent.Union(own, masked).ToList();
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var count = (int)Math.Clamp(Length - _position, 0, buffer.Length);
            var window = buffer[..count];
            if (parent is null)
            {
                window.Clear();
            }
            else
            {
                parent.Position = _position;
                parent.ReadExactly(window);
            }

            foreach (var (start, length, data) in layer.Decided(_position, count))
            {
                var part = window.Slice((int)(start - _position), (int)length);
                if (data)
                {
                    layer._source.Read(start, part);
                }
                else
                {
                    part.Clear();
                }
            }

            _position += count;
            return count;
        }

        public override long Seek(long offset, SeekOrigin origin)
        {
            var target = origin switch
            {
                SeekOrigin.Begin => offset,
                SeekOrigin.Current => _position + offset,
                _ => Length + offset,
            };
            ArgumentOutOfRangeException.ThrowIfNegative(target, nameof(offset));
            return _position = target;
        }

        public override void Flush()
        {
        }

        public override void SetLength(long value) => throw new NotSupportedException("A qcow2 layer's content is read-only.");

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("A qcow2 layer's content is read-only.");

        protected override void Dispose(bool disposing)
        {
            if (disposing && ownsParent)
            {
                parent?.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
