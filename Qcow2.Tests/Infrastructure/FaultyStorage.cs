using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>What reaches the disk of the writes that were not flushed when the machine lost power.</summary>
public enum CrashMode
{
    /// <summary>None of them.</summary>
    DropUnflushed,

    /// <summary>Any subset: a disk's volatile cache persists writes in any order.</summary>
    RandomSubset,

    /// <summary>Any subset, and one write (the one in flight, else a random one) torn at a 512-byte boundary.</summary>
    TornWrite,
}

/// <summary>
/// A storage double that behaves like a disk with a volatile write cache, and breaks on cue.
/// Writes stay in memory until <see cref="Flush"/> makes them durable in the underlying storage.
/// Writes and flushes are numbered from 0 (<see cref="Operations"/>): at operation
/// <see cref="CrashAt"/> the machine "crashes" — that call and every later one fail, and of the
/// volatile writes only what <see cref="Mode"/> says survives. At operation <see cref="FailAt"/>
/// (and at read <see cref="FailReadAt"/>) the call fails with an <see cref="IOException"/> and
/// changes nothing, but the machine stays up.
/// </summary>
public sealed class FaultyStorage(IStorage durable) : IStorage
{
    private const int SectorSize = 512;
    private readonly Lock _sync = new();
    private readonly List<(long Offset, byte[] Data)> _volatile = [];
    private long _operations;
    private long _reads;
    private long _length = durable.Length;

    /// <summary>The write or flush at which the machine loses power (never by default).</summary>
    public long CrashAt { get; init; } = long.MaxValue;

    public CrashMode Mode { get; init; }

    /// <summary>Seeds the choice of surviving writes and of the tear.</summary>
    public int Seed { get; init; }

    /// <summary>The write or flush that fails with an I/O error (never by default).</summary>
    public long FailAt { get; init; } = long.MaxValue;

    /// <summary>The read that fails with an I/O error (never by default).</summary>
    public long FailReadAt { get; init; } = long.MaxValue;

    public bool Crashed { get; private set; }

    /// <summary>How many injected I/O errors were thrown (0 or 1).</summary>
    public int Failures { get; private set; }

    /// <summary>Writes and flushes issued so far: the crash and failure points a workload offers.</summary>
    public long Operations => _operations;

    /// <summary>Reads issued so far: the read failure points a workload offers.</summary>
    public long Reads => _reads;

    /// <summary>When set, every numbered operation is described here (for diagnosing a failing point).</summary>
    public List<string>? Trace { get; init; }

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
            if (_reads++ == FailReadAt)
            {
                Failures++;
                throw new IOException($"Injected I/O error: read of {buffer.Length} bytes at 0x{offset:x}.");
            }

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
            var operation = Begin("write", offset, buffer.Length);
            if (operation == CrashAt)
            {
                Crash(inFlight: (offset, buffer.ToArray()));
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

    /// <summary>
    /// A hole punched in a file with a volatile cache reaches the disk like any write, in any order
    /// with the others until a flush: modelled as a volatile write of zeros, so crash enumeration
    /// catches a hole punched before the metadata that unmapped it is durable.
    /// </summary>
    public bool TryPunchHole(long offset, long length)
    {
        if (length > int.MaxValue || offset + length > _length)
        {
            return false;
        }

        Write(offset, new byte[length]);
        return true;
    }

    public void SetLength(long length)
    {
        lock (_sync)
        {
            ThrowIfCrashed();
            MakeDurable();
            durable.SetLength(length);
            _length = length;
        }
    }

    public void Flush()
    {
        lock (_sync)
        {
            var operation = Begin("flush", 0, 0);
            if (operation == CrashAt)
            {
                Crash(inFlight: null); // in the middle of the flush: some of its writes made it
            }

            MakeDurable();
        }
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        Flush();
        return ValueTask.CompletedTask;
    }

    /// <summary>The machine shuts down cleanly after the run: whatever the image left unflushed still reaches the disk.</summary>
    public void SettleAfterRun()
    {
        lock (_sync)
        {
            if (!Crashed)
            {
                MakeDurable();
            }
        }
    }

    public void Dispose()
    {
        // The durable storage belongs to the test; a crashed machine closes nothing gracefully.
    }

    private long Begin(string what, long offset, int length)
    {
        ThrowIfCrashed();
        var operation = _operations++;
        Trace?.Add($"{operation}: {what} {(length > 0 ? $"{length} bytes at 0x{offset:x}" : string.Empty)}");
        if (operation == FailAt)
        {
            Failures++;
            throw new IOException($"Injected I/O error: {what} {(length > 0 ? $"of {length} bytes at 0x{offset:x}" : string.Empty)}(operation {operation}).");
        }

        return operation;
    }

    private void MakeDurable()
    {
        foreach (var (offset, data) in _volatile)
        {
            durable.Write(offset, data);
        }

        _volatile.Clear();
        durable.Flush();
    }

    private void Crash((long Offset, byte[] Data)? inFlight)
    {
        Crashed = true;
        var random = new Random(Seed);
        var survivors = Mode == CrashMode.DropUnflushed ? [] : _volatile.Where(_ => random.Next(2) == 0).ToList();
        if (Mode == CrashMode.TornWrite)
        {
            var torn = inFlight ?? (_volatile.Count > 0 ? _volatile[random.Next(_volatile.Count)] : null);
            if (torn is { } write && write.Data.Length > SectorSize)
            {
                var sectors = (write.Data.Length + SectorSize - 1) / SectorSize;
                var kept = random.Next(1, sectors) * SectorSize; // a strict prefix of whole sectors
                survivors.Remove(write);
                survivors.Add((write.Offset, write.Data[..kept]));
            }
        }

        foreach (var (offset, data) in survivors)
        {
            durable.Write(offset, data);
        }

        durable.Flush();
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
