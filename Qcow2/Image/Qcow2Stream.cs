namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The guest disk of a <see cref="Qcow2Image"/> as a seekable stream that behaves like a disk:
/// Length is the virtual size, reads past the end return 0 bytes, writes past the end fail,
/// <see cref="SetLength"/> to the current length does nothing. Each stream has its own position;
/// the image underneath is thread-safe.
/// </summary>
/// <remarks>
/// Who makes writes durable, as with a <see cref="FileStream"/>: <see cref="Flush()"/> flushes the
/// whole image (what every stream and caller wrote to it so far), and disposing a stream that was
/// written through flushes the image too. A stream that owns its image (<see cref="Open"/>,
/// <see cref="Create"/>, or <c>leaveOpen: false</c>) disposes it, which flushes and closes it; one
/// that leaves it open (<see cref="Qcow2Image.OpenStream"/>'s default) leaves closing the image — and
/// clearing its dirty state and file handles — to whoever holds it.
/// </remarks>
public sealed class Qcow2Stream : Stream
{
    private readonly Qcow2Image _image;
    private readonly bool _leaveOpen;
    private long _position;
    private bool _disposed;
    private bool _written;

    /// <summary>Wraps <paramref name="image"/>.</summary>
    /// <param name="image">The image whose guest disk to expose.</param>
    /// <param name="leaveOpen">Whether disposing the stream leaves the image open.</param>
    public Qcow2Stream(Qcow2Image image, bool leaveOpen)
    {
        ArgumentNullException.ThrowIfNull(image);
        _image = image;
        _leaveOpen = leaveOpen;
    }

    /// <summary>
    /// Opens the image at <paramref name="path"/> and returns a stream that owns it: disposing the
    /// stream flushes and closes the image. For handing a disk to a library that disposes only the
    /// stream (DiscUtils' <c>Ownership.Dispose</c>).
    /// </summary>
    /// <inheritdoc cref="Qcow2Image.Open(string, Qcow2OpenOptions?)" path="/exception"/>
    public static Qcow2Stream Open(string path, Qcow2OpenOptions? options = null) => new(Qcow2Image.Open(path, options), leaveOpen: false);

    /// <summary>
    /// Creates an image at <paramref name="path"/> (see <see cref="Qcow2Image.Create(string, Qcow2CreateOptions)"/>)
    /// and returns a writable stream that owns it: disposing the stream flushes and closes the image.
    /// </summary>
    /// <inheritdoc cref="Qcow2Image.Create(string, Qcow2CreateOptions)" path="/exception"/>
    public static Qcow2Stream Create(string path, Qcow2CreateOptions options) => new(Qcow2Image.Create(path, options), leaveOpen: false);

    /// <summary>The image this stream reads and writes.</summary>
    public Qcow2Image Image => _image;

    /// <inheritdoc />
    public override bool CanRead => !_disposed;

    /// <inheritdoc />
    public override bool CanSeek => !_disposed;

    /// <inheritdoc />
    public override bool CanWrite => !_disposed && _image.IsWritable;

    /// <inheritdoc />
    public override long Length
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _image.Size;
        }
    }

    /// <inheritdoc />
    public override long Position
    {
        get => _position;
        set
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _position = value;
        }
    }

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var target = origin switch
        {
            SeekOrigin.Begin => offset,
            SeekOrigin.Current => _position + offset,
            SeekOrigin.End => _image.Size + offset,
            _ => throw new ArgumentOutOfRangeException(nameof(origin)),
        };
        if (target < 0)
        {
            throw new IOException("An attempt was made to move the position before the beginning of the disk.");
        }

        _position = target;
        return target;
    }

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count)
    {
        ValidateBufferArguments(buffer, offset, count);
        var length = Available(count);
        if (length == 0)
        {
            return 0;
        }

        _image.Read(_position, buffer, offset, length);
        _position += length;
        return length;
    }

    /// <inheritdoc />
    public override int Read(Span<byte> buffer)
    {
        var length = Available(buffer.Length);
        if (length == 0)
        {
            return 0;
        }

        _image.Read(_position, buffer[..length]);
        _position += length;
        return length;
    }

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        ValidateBufferArguments(buffer, offset, count);
        return ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <inheritdoc />
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var length = Available(buffer.Length);
        if (length == 0)
        {
            return 0;
        }

        var position = _position;
        _position += length;
        await _image.ReadAsync(position, buffer[..length], cancellationToken).ConfigureAwait(false);
        return length;
    }

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count)
    {
        ValidateBufferArguments(buffer, offset, count);
        Write(buffer.AsSpan(offset, count));
    }

    /// <inheritdoc />
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        CheckWritable(buffer.Length);
        _written = true;
        _image.Write(_position, buffer);
        _position += buffer.Length;
    }

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        ValidateBufferArguments(buffer, offset, count);
        return WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <inheritdoc />
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        CheckWritable(buffer.Length);
        _written = true;
        var position = _position;
        _position += buffer.Length;
        await _image.WriteAsync(position, buffer, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Makes everything written to the image so far durable (data and metadata reach the disk); nothing to do when read-only.</summary>
    public override void Flush()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_image.IsWritable)
        {
            _image.Flush();
        }
    }

    /// <inheritdoc cref="Flush"/>
    public override Task FlushAsync(CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _image.IsWritable ? _image.FlushAsync(cancellationToken).AsTask() : Task.CompletedTask;
    }

    /// <summary>
    /// Does nothing when <paramref name="value"/> is the current <see cref="Length"/> (disk
    /// libraries call that); any other length is not supported.
    /// </summary>
    /// <exception cref="NotSupportedException"><paramref name="value"/> is not the disk's size: resize with <see cref="Qcow2Image.Resize(long, bool)"/>.</exception>
    public override void SetLength(long value)
    {
        if (value != Length)
        {
            throw new NotSupportedException($"A qcow2 disk keeps its {Length}-byte size through Stream.SetLength; change it with Qcow2Image.Resize.");
        }
    }

    /// <summary>
    /// Flushes the image when something was written through this stream, then disposes the image
    /// if this stream owns it. Like <see cref="FileStream"/>, a failing flush throws.
    /// </summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            if (!_leaveOpen)
            {
                _image.Dispose();
            }
            else if (_written && _image.IsWritable && !_image.IsDisposed)
            {
                _image.Flush();
            }
        }

        base.Dispose(disposing);
    }

    /// <inheritdoc cref="Dispose(bool)"/>
    public override async ValueTask DisposeAsync()
    {
        if (!_disposed)
        {
            _disposed = true;
            if (!_leaveOpen)
            {
                await _image.DisposeAsync().ConfigureAwait(false);
            }
            else if (_written && _image.IsWritable && !_image.IsDisposed)
            {
                await _image.FlushAsync().ConfigureAwait(false);
            }
        }

        await base.DisposeAsync().ConfigureAwait(false); // Dispose(true) after this finds nothing left to do
    }

    private int Available(int requested)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var size = _image.Size;
        return _position >= size ? 0 : (int)Math.Min(requested, size - _position);
    }

    private void CheckWritable(int count)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_image.IsWritable)
        {
            throw new NotSupportedException("The image was opened read-only.");
        }

        if (_position + count > _image.Size)
        {
            throw new IOException($"Writing {count} bytes at {_position} would pass the end of the {_image.Size}-byte disk.");
        }
    }
}
