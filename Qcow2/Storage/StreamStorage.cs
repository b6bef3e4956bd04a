namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Adapts a caller's seekable <see cref="Stream"/>. A Stream has one shared position, so every
/// request holds a lock for its seek and transfer.
/// </summary>
public sealed class StreamStorage : IStorage
{
    private readonly Stream _stream;
    private readonly bool _leaveOpen;
    private readonly SemaphoreSlim _lock = new(1, 1);
    private PermissionLock? _fileLock;

    /// <summary>Wraps <paramref name="stream"/>; it must be seekable and readable.</summary>
    /// <param name="stream">The image bytes.</param>
    /// <param name="leaveOpen">Whether disposing this storage leaves the stream open.</param>
    /// <param name="path">Optional path used to resolve relative backing file names.</param>
    public StreamStorage(Stream stream, bool leaveOpen, string? path = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanSeek || !stream.CanRead)
        {
            throw new ArgumentException("The stream must be readable and seekable.", nameof(stream));
        }

        _stream = stream;
        _leaveOpen = leaveOpen;
        Path = path;
    }

    /// <inheritdoc />
    public long Length => _stream.Length;

    /// <inheritdoc />
    public bool CanWrite => _stream.CanWrite;

    /// <inheritdoc />
    public string? Path { get; }

    /// <inheritdoc />
    public int Read(long offset, Span<byte> buffer)
    {
        _lock.Wait();
        try
        {
            _stream.Position = offset;
            var total = 0;
            while (total < buffer.Length)
            {
                var read = _stream.Read(buffer[total..]);
                if (read == 0)
                {
                    break;
                }

                total += read;
            }

            return total;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            _stream.Position = offset;
            var total = 0;
            while (total < buffer.Length)
            {
                var read = await _stream.ReadAsync(buffer[total..], cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }

                total += read;
            }

            return total;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        _lock.Wait();
        try
        {
            _stream.Position = offset;
            _stream.Write(buffer);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            _stream.Position = offset;
            await _stream.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public void SetLength(long length)
    {
        _lock.Wait();
        try
        {
            _stream.SetLength(length);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public void Flush()
    {
        _lock.Wait();
        try
        {
            if (_stream is FileStream file)
            {
                file.Flush(flushToDisk: true);
            }
            else
            {
                _stream.Flush();
            }
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (_stream is FileStream)
        {
            Flush();
            return;
        }

        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// Locks the file under a <see cref="FileStream"/> as <see cref="FileStorage"/> locks its
    /// files; other streams are not files anyone else can open, so nothing is locked.
    /// </summary>
    internal void Lock(FileLockRequest request, FileLocking locking)
    {
        if (_stream is FileStream file)
        {
            _fileLock ??= new PermissionLock(file.SafeFileHandle, file.Name, locking);
            _fileLock.Change(request);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _fileLock?.Release(); // a stream left open must not keep the image locked
        if (!_leaveOpen)
        {
            _stream.Dispose();
        }

        _lock.Dispose();
    }
}
