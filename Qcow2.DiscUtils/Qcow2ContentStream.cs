using DiscUtils.Streams;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// The guest disk of a qcow2 image as DiscUtils' <see cref="SparseStream"/>: reads and writes go
/// through the whole backing chain, and <see cref="Extents"/> are the ranges that hold data in some
/// layer (qemu-img map's <c>data</c>), so DiscUtils copies and scans only what is stored.
/// </summary>
internal sealed class Qcow2ContentStream : SparseStream
{
    private readonly Qcow2Image _image;
    private readonly Qcow2Stream _stream;
    private readonly bool _ownsImage;

    public Qcow2ContentStream(Qcow2Image image, bool ownsImage)
    {
        _image = image;
        _stream = image.OpenStream(leaveOpen: true);
        _ownsImage = ownsImage;
    }

    public override bool CanRead => _stream.CanRead;

    public override bool CanSeek => _stream.CanSeek;

    public override bool CanWrite => _stream.CanWrite;

    public override long Length => _stream.Length;

    public override long Position
    {
        get => _stream.Position;
        set => _stream.Position = value;
    }

    public override IEnumerable<StreamExtent> Extents => GetExtentsInRange(0, Length);

    /// <summary>The stored ranges inside [start, start + count), from the chain's map of that range only.</summary>
    public override IEnumerable<StreamExtent> GetExtentsInRange(long start, long count)
    {
        var end = Math.Min(Length, start + Math.Max(count, 0));
        start = Math.Max(start, 0);
        if (start >= end)
        {
            return [];
        }

        var extents = new List<StreamExtent>();
        foreach (var entry in _image.GetMap(start, end - start))
        {
            if (!entry.Data)
            {
                continue;
            }

            if (extents.Count > 0 && extents[^1].Start + extents[^1].Length == entry.Start)
            {
                extents[^1] = new StreamExtent(extents[^1].Start, extents[^1].Length + entry.Length);
            }
            else
            {
                extents.Add(new StreamExtent(entry.Start, entry.Length));
            }
        }

        return extents;
    }

    public override int Read(byte[] buffer, int offset, int count) => _stream.Read(buffer, offset, count);

    public override int Read(Span<byte> buffer) => _stream.Read(buffer);

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _stream.ReadAsync(buffer, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _stream.ReadAsync(buffer, offset, count, cancellationToken);

    public override void Write(byte[] buffer, int offset, int count) => _stream.Write(buffer, offset, count);

    public override void Write(ReadOnlySpan<byte> buffer) => _stream.Write(buffer);

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        _stream.WriteAsync(buffer, cancellationToken);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _stream.WriteAsync(buffer, offset, count, cancellationToken);

    /// <summary>Zeroes <paramref name="count"/> bytes from the position as qcow2 zero clusters where whole clusters allow.</summary>
    public override void Clear(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var position = _stream.Position;
        var length = Math.Min(count, Math.Max(0, Length - position));
        if (length > 0)
        {
            _image.WriteZeroes(position, length);
        }

        _stream.Position = position + count;
    }

    public override long Seek(long offset, SeekOrigin origin) => _stream.Seek(offset, origin);

    public override void SetLength(long value) => _stream.SetLength(value);

    public override void Flush() => _stream.Flush();

    public override Task FlushAsync(CancellationToken cancellationToken) => _stream.FlushAsync(cancellationToken);

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _stream.Dispose();
            if (_ownsImage)
            {
                _image.Dispose();
            }
        }

        base.Dispose(disposing);
    }
}
