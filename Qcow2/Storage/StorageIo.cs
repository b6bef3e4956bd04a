using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Dispatches to the sync or async storage call, so one core routine serves both paths: with
/// <c>async == false</c> every returned task has already completed.
/// </summary>
internal static class StorageIo
{
    public static ValueTask<int> ReadAsync(this IStorage storage, long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken) =>
        async ? storage.ReadAsync(offset, buffer, cancellationToken) : new ValueTask<int>(storage.Read(offset, buffer.Span));

    public static ValueTask WriteAsync(this IStorage storage, long offset, ReadOnlyMemory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        if (async)
        {
            return storage.WriteAsync(offset, buffer, cancellationToken);
        }

        storage.Write(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public static ValueTask FlushAsync(this IStorage storage, bool async, CancellationToken cancellationToken)
    {
        if (async)
        {
            return storage.FlushAsync(cancellationToken);
        }

        storage.Flush();
        return ValueTask.CompletedTask;
    }

    /// <summary>Reads a whole buffer; bytes past the end of the file read as zeros (as in QEMU).</summary>
    public static async ValueTask ReadZeroFilledAsync(this IStorage storage, long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        var read = await storage.ReadAsync(offset, buffer, async, cancellationToken).ConfigureAwait(false);
        if (read < buffer.Length)
        {
            buffer.Span[read..].Clear();
        }
    }

    /// <summary>Reads a metadata structure that must lie entirely inside the file.</summary>
    public static async ValueTask ReadStructureAsync(this IStorage storage, long offset, Memory<byte> buffer, string structure, bool async, CancellationToken cancellationToken)
    {
        var read = await storage.ReadAsync(offset, buffer, async, cancellationToken).ConfigureAwait(false);
        if (read < buffer.Length)
        {
            throw Qcow2Corruption.Create(structure, $"{buffer.Length} bytes needed but the file ends after {read}", offset);
        }
    }
}
