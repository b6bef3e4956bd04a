using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>
/// A storage double that behaves like a disk with a volatile write cache. Writes stay in memory
/// until <see cref="Flush"/> makes them durable in the underlying file. When the write budget is
/// used up the "machine crashes": the write that crossed the budget and every later call fail,
/// and the volatile writes are lost — all of them, or (with <see cref="KeepRandomSubset"/>) an
/// arbitrary subset, since a real disk may persist unflushed writes in any order.
/// </summary>
public sealed class CrashingStorage(IStorage durable, long writeBudget, Random? random = null) : IStorage
{
    private readonly Lock _sync = new();
    private readonly List<(long Offset, byte[] Data)> _volatile = [];
    private long _writes;
    private long _length = durable.Length;

    /// <summary>Keep a random subset of the unflushed writes at the crash instead of none.</summary>
    public bool KeepRandomSubset { get; init; }

    /// <summary>
    /// Flushes count against the budget too: crossing it at a flush is a crash in the middle of
    /// that flush (with <see cref="KeepRandomSubset"/>, some of its writes made it).
    /// </summary>
    public bool CrashAtFlushes { get; init; }

    public bool Crashed { get; private set; }

    /// <summary>Writes (and, with <see cref="CrashAtFlushes"/>, flushes) issued so far: the crash points a workload offers.</summary>
    public long Writes => _writes;

    public long Length
    {
        get
        {
            ThrowIfCrashed();
            return _length;
        }
    }

    public bool CanWrite => true;

    public string? Path => durable.Path;

    public int Read(long offset, Span<byte> buffer)
    {
        lock (_sync)
        {
            ThrowIfCrashed();
            var inside = (int)Math.Clamp(_length - offset, 0, buffer.Length);
            var read = durable.Read(offset, buffer[..inside]);
            buffer[read..inside].Clear();
            foreach (var (at, data) in _volatile)
            {
                var start = Math.Max(at, offset);
                var end = Math.Min(at + data.Length, offset + inside);
                if (start < end)
                {
                    data.AsSpan((int)(start - at), (int)(end - start)).CopyTo(buffer[(int)(start - offset)..]);
                }
            }

            return inside;
        }
    }

    public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) => new(Read(offset, buffer.Span));

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        lock (_sync)
        {
            ThrowIfCrashed();
            if (++_writes > writeBudget)
            {
                Crash();
            }

            _volatile.Add((offset, buffer.ToArray()));
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
        lock (_sync)
        {
            ThrowIfCrashed();
            Flush();
            durable.SetLength(length);
            _length = length;
        }
    }

    public void Flush()
    {
        lock (_sync)
        {
            ThrowIfCrashed();
            if (CrashAtFlushes && ++_writes > writeBudget)
            {
                Crash();
            }

            foreach (var (offset, data) in _volatile)
            {
                durable.Write(offset, data);
            }

            _volatile.Clear();
            durable.Flush();
        }
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        Flush();
        return ValueTask.CompletedTask;
    }

    public void Dispose()
    {
        // The durable file belongs to the test; a crashed machine closes nothing gracefully.
    }

    private void Crash()
    {
        Crashed = true;
        if (KeepRandomSubset && random is not null)
        {
            foreach (var (offset, data) in _volatile.Where(_ => random.Next(2) == 0))
            {
                durable.Write(offset, data);
            }
        }

        _volatile.Clear();
        throw new IOException("Simulated crash: the machine lost power.");
    }

    private void ThrowIfCrashed()
    {
        if (Crashed)
        {
            throw new IOException("Simulated crash: the machine is down.");
        }
    }
}
