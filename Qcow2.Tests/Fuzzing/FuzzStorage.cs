using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>
/// An in-memory file for fuzz cases: the image bytes, optionally followed by a sparse tail that
/// makes the file claim any length (a valid image in a 200 TiB sparse file). Bytes nobody wrote
/// read as zeros. Writes land in 64 KiB pages; past <see cref="MaxWrittenBytes"/> of new pages the
/// disk is "full" (IOException, as ENOSPC), so a runaway writer cannot eat the test's memory.
/// </summary>
internal sealed class FuzzStorage : IStorage
{
    public const long MaxWrittenBytes = 64L << 20;
    private const int PageBits = 16;
    private const int PageSize = 1 << PageBits;

    private readonly Lock _lock = new();
    private readonly byte[] _base;
    private readonly Dictionary<long, byte[]> _pages = [];
    private long _length;

    public FuzzStorage(byte[] image, long length, bool writable, string? path = null)
    {
        _base = image;
        _length = Math.Max(length, 0);
        CanWrite = writable;
        Path = path;
    }

    public long Length
    {
        get
        {
            lock (_lock)
            {
                return _length;
            }
        }
    }

    public bool CanWrite { get; }

    public string? Path { get; }

    /// <summary>Bytes of pages written so far.</summary>
    public long WrittenBytes => (long)_pages.Count * PageSize;

    /// <summary>The first <paramref name="count"/> bytes of the file as they are now.</summary>
    public byte[] Snapshot(int count)
    {
        var bytes = new byte[count];
        Read(0, bytes);
        return bytes;
    }

    public int Read(long offset, Span<byte> buffer)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        lock (_lock)
        {
            if (offset >= _length)
            {
                return 0;
            }

            var count = (int)Math.Min(buffer.Length, _length - offset);
            var done = 0;
            while (done < count)
            {
                var position = offset + done;
                var page = position >> PageBits;
                var inPage = (int)(position & (PageSize - 1));
                var chunk = Math.Min(count - done, PageSize - inPage);
                var target = buffer.Slice(done, chunk);
                if (_pages.TryGetValue(page, out var written))
                {
                    written.AsSpan(inPage, chunk).CopyTo(target);
                }
                else if (position < _base.Length)
                {
                    var fromBase = (int)Math.Min(chunk, _base.Length - position);
                    _base.AsSpan((int)position, fromBase).CopyTo(target);
                    target[fromBase..].Clear();
                }
                else
                {
                    target.Clear();
                }

                done += chunk;
            }

            return count;
        }
    }

    public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        new(Read(offset, buffer.Span));

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (!CanWrite)
        {
            throw new NotSupportedException("read-only fuzz storage");
        }

        lock (_lock)
        {
            var done = 0;
            while (done < buffer.Length)
            {
                var position = offset + done;
                var page = position >> PageBits;
                var inPage = (int)(position & (PageSize - 1));
                var chunk = Math.Min(buffer.Length - done, PageSize - inPage);
                buffer.Slice(done, chunk).CopyTo(Page(page)[inPage..]);
                done += chunk;
            }

            _length = Math.Max(_length, offset + buffer.Length);
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        Write(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public void SetLength(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        lock (_lock)
        {
            if (length < _length)
            {
                // Zero what is cut off, so a later extension reads zeros again.
                foreach (var page in _pages.Keys.Where(p => (p << PageBits) + PageSize > length).ToList())
                {
                    var from = (int)Math.Max(0, length - (page << PageBits));
                    _pages[page].AsSpan(from).Clear();
                }

                if (length < _base.Length)
                {
                    for (var page = length >> PageBits; page << PageBits < _base.Length; page++)
                    {
                        var from = (int)Math.Max(0, length - (page << PageBits));
                        Page(page)[from..].Clear();
                    }
                }
            }

            _length = length;
        }
    }

    public void Flush()
    {
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    public void Dispose()
    {
    }

    private Span<byte> Page(long page)
    {
        if (!_pages.TryGetValue(page, out var bytes))
        {
            if (WrittenBytes >= MaxWrittenBytes)
            {
                throw new IOException("No space left on device (fuzz storage write limit)");
            }

            bytes = new byte[PageSize];
            var start = page << PageBits;
            if (start < _base.Length)
            {
                _base.AsSpan((int)start, (int)Math.Min(PageSize, _base.Length - start)).CopyTo(bytes);
            }

            _pages.Add(page, bytes);
        }

        return bytes;
    }
}
