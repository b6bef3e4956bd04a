using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>Passes every call to <paramref name="inner"/> and counts the ones whose number a cost test bounds.</summary>
public sealed class CountingStorage(IStorage inner) : IStorage
{
    private int _lengthReads;
    private int _writes;
    private int _flushes;

    /// <summary>Times the file was asked for its length (an fstat each).</summary>
    public int LengthReads => _lengthReads;

    /// <summary>Write calls.</summary>
    public int Writes => _writes;

    /// <summary>Flushes (an fsync each).</summary>
    public int Flushes => _flushes;

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

    /// <summary>When set, every write ("W offset+length") and flush ("F") is appended here, for diagnosing an ordering.</summary>
    public System.Text.StringBuilder? Log { get; set; }

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        Log?.Append($"W{offset:x}+{buffer.Length} ");
        Interlocked.Increment(ref _writes);
        inner.Write(offset, buffer);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        Log?.Append($"W{offset:x}+{buffer.Length} ");
        Interlocked.Increment(ref _writes);
        return inner.WriteAsync(offset, buffer, cancellationToken);
    }

    public void SetLength(long length) => inner.SetLength(length);

    public void Flush()
    {
        Log?.Append("F ");
        Interlocked.Increment(ref _flushes);
        inner.Flush();
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        Log?.Append("F ");
        Interlocked.Increment(ref _flushes);
        return inner.FlushAsync(cancellationToken);
    }

    public void Reserve(long offset, long length) => inner.Reserve(offset, length);

    public bool TryPunchHole(long offset, long length) => inner.TryPunchHole(offset, length);

    public bool TryGetDataExtent(long offset, out bool isData, out long extentEnd) => inner.TryGetDataExtent(offset, out isData, out extentEnd);

    public void Dispose() => inner.Dispose();
}
