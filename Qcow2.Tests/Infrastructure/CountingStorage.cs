using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>Passes every call to <paramref name="inner"/>, counts how often the file is asked for its length (an fstat each) and records the length of every write.</summary>
public sealed class CountingStorage(IStorage inner) : IStorage
{
    private readonly System.Collections.Concurrent.ConcurrentQueue<int> _writeLengths = new();
    private int _lengthReads;

    /// <summary>The length of every write, in order (one system call each).</summary>
    public IReadOnlyList<int> WriteLengths => [.. _writeLengths];

    /// <summary>Called with the offset and length of every write before it reaches the file.</summary>
    public Action<long, int>? BeforeWrite { get; set; }

    /// <summary>Times the file was asked for its length.</summary>
    public int LengthReads => _lengthReads;

    public long Length
    {
        get
        {
            Interlocked.Increment(ref _lengthReads);
            return inner.Length;
        }
    }

    public bool CanWrite => inner.CanWrite;

    public string? Path => inner.Path;

    public int Read(long offset, Span<byte> buffer) => inner.Read(offset, buffer);

    public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) => inner.ReadAsync(offset, buffer, cancellationToken);

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        BeforeWrite?.Invoke(offset, buffer.Length);
        _writeLengths.Enqueue(buffer.Length);
        inner.Write(offset, buffer);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        BeforeWrite?.Invoke(offset, buffer.Length);
        _writeLengths.Enqueue(buffer.Length);
        return inner.WriteAsync(offset, buffer, cancellationToken);
    }

    public void SetLength(long length) => inner.SetLength(length);

    public void Flush() => inner.Flush();

    public ValueTask FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

    public void Reserve(long offset, long length) => inner.Reserve(offset, length);

    public bool TryPunchHole(long offset, long length) => inner.TryPunchHole(offset, length);

    public bool TryGetDataExtent(long offset, out bool isData, out long extentEnd) => inner.TryGetDataExtent(offset, out isData, out extentEnd);

    public void Dispose() => inner.Dispose();
}
