using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>
/// The operations a fault workload performs, through the synchronous or the asynchronous API,
/// each recorded in the <see cref="GuestHistory"/>: what it is about to write before the call
/// (a crash may keep it), what the disk reads after it (read back through the image).
/// </summary>
public sealed class WorkloadContext(Qcow2Image image, GuestHistory history, bool async, int seed)
{
    public Qcow2Image Image => image;

    public GuestHistory History => history;

    public Random Random { get; } = new(seed);

    /// <summary>
    /// When set (I/O error runs), calls that fail with an <see cref="IOException"/> are tolerated
    /// and the workload goes on; this counts the errors injected so far, so a call that completed
    /// although an error was injected during it is reported as having swallowed it.
    /// </summary>
    public Func<int>? ToleratedFailures { get; init; }

    /// <summary>
    /// Whether a call during which an error was injected must fail. True for write and flush
    /// errors; a failed read may be one the engine could do without (the overlap index reads
    /// snapshot L1 tables for itself and tries again later), and is judged by the results.
    /// </summary>
    public bool ErrorsMustSurface { get; init; } = true;

    /// <summary>
    /// What the workload claims to exercise, counted by the engine during the run (e.g. journal
    /// packs): the tests require every count to be positive in the run without faults.
    /// </summary>
    public Dictionary<string, int> Coverage { get; } = [];

    /// <summary>What went wrong that is not an exception (swallowed errors, wrong read-backs).</summary>
    public List<string> Problems { get; } = [];

    public int ClusterSize => image.ClusterSize;

    public long Size => image.Size;

    /// <summary>Random bytes, different on every call.</summary>
    public byte[] RandomBytes(int length)
    {
        var bytes = new byte[length];
        Random.NextBytes(bytes);
        return bytes;
    }

    public void Write(long offset, byte[] data)
    {
        history.Expect(offset, data);
        if (!Run($"write of {data.Length} bytes at 0x{offset:x}", () => image.Write(offset, data), () => image.WriteAsync(offset, data)))
        {
            Observe(offset, data.Length); // a failed write leaves old bytes, new ones or a mix
        }
        else if (Observe(offset, data.Length) is { } observed && !observed.AsSpan().SequenceEqual(data))
        {
            Problems.Add($"the write of {data.Length} bytes at 0x{offset:x} reads back differently");
        }
    }

    public void WriteZeroes(long offset, long length, bool unmap)
    {
        history.Expect(offset, new byte[length]);
        Run($"write-zeroes at 0x{offset:x}", () => image.WriteZeroes(offset, length, unmap), () => image.WriteZeroesAsync(offset, length, unmap));
        Observe(offset, length);
    }

    /// <summary>Discards whole clusters; without a backing file they read as zeros afterwards.</summary>
    public void Discard(long offset, long length)
    {
        history.Expect(offset, new byte[length]);
        Run($"discard at 0x{offset:x}", () => image.Discard(offset, length), () => image.DiscardAsync(offset, length));
        Observe(offset, length);
    }

    public void Flush()
    {
        if (Run("flush", image.Flush, () => image.FlushAsync()))
        {
            history.Flushed();
        }
    }

    public void Resize(long size)
    {
        history.Grow(size);
        Run($"resize to {size}", () => image.Resize(size), () => image.ResizeAsync(size));
    }

    public void CreateSnapshot(string name) =>
        Run($"snapshot create {name}", () => image.CreateSnapshot(name), async () => await image.CreateSnapshotAsync(name).ConfigureAwait(false));

    /// <summary>Deletes the snapshot if it exists (its creation may have failed with an injected I/O error).</summary>
    public void DeleteSnapshot(string name)
    {
        if (image.Snapshots.Any(s => s.Name == name))
        {
            Run($"snapshot delete {name}", () => image.DeleteSnapshot(name, SnapshotLookup.Name), () => image.DeleteSnapshotAsync(name, SnapshotLookup.Name));
        }
    }

    /// <summary>Closes the image (dispose flushes).</summary>
    public void Close()
    {
        if (Run("close", image.Dispose, () => image.DisposeAsync()))
        {
            history.Flushed();
        }
    }

    /// <summary>Runs one call; false when it failed with a tolerated I/O error.</summary>
    private bool Run(string what, Action sync, Func<ValueTask> asynchronous)
    {
        var failuresBefore = ToleratedFailures?.Invoke() ?? 0;
        try
        {
            if (async)
            {
                asynchronous().AsTask().GetAwaiter().GetResult();
            }
            else
            {
                sync();
            }
        }
        catch (IOException) when (ToleratedFailures is not null)
        {
            return false;
        }

        if (ErrorsMustSurface && ToleratedFailures is not null && ToleratedFailures() > failuresBefore)
        {
            Problems.Add($"{what} completed although an I/O error was injected during it");
        }

        return true;
    }

    private byte[]? Observe(long offset, long length)
    {
        var observed = new byte[length];
        // A read that failed with the injected error is tried once more (only one is injected):
        // the history must learn what the disk holds, or it would judge later reads by stale bytes.
        if (!Run($"read at 0x{offset:x}", () => image.Read(offset, observed), () => image.ReadAsync(offset, observed))
            && !Run($"read at 0x{offset:x} (again)", () => image.Read(offset, observed), () => image.ReadAsync(offset, observed)))
        {
            return null;
        }

        history.Observed(offset, observed);
        return observed;
    }
}
