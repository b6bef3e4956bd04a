using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

// Flush and close of a session, I/O error tracking, and the extensions' view of the image.
public sealed partial class Qcow2Image
{
    /// <summary>Makes everything written so far durable: guest data, then refcounts, L2 and L1 tables.</summary>
    public void Flush()
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(FlushCoreAsync(async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Flush"/>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(FlushCoreAsync(async: true, cancellationToken));
    }

    /// <summary>The loaded extension of type <typeparamref name="T"/>, if any.</summary>
    public T? GetExtension<T>()
        where T : class, IImageExtension => _session.Extensions.OfType<T>().FirstOrDefault();

    private void ThrowIfNotWritable(long offset, long length)
    {
        ThrowIfDisposed();
        ThrowIfNotWritable();
        ThrowIfOutOfRange(offset, length);
    }

    /// <summary>Refuses changes on a read-only image or snapshot view, and on one the overlap check marked corrupt.</summary>
    private void ThrowIfNotWritable() => _ = Writes;

    /// <summary>Flushes a writable image; nothing for a read-only one.</summary>
    internal async ValueTask FlushCoreAsync(bool async, CancellationToken cancellationToken)
    {
        if (_writes is null || _isSnapshotView)
        {
            return;
        }

        var writes = Writes; // refuses an image marked corrupt
        using (await _session.Metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            await writes.State.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            foreach (var extension in _session.Extensions)
            {
                extension.Flush(new ExtensionHost(this, extension));
            }

            await writes.State.Metadata.CloseDirtyWindowAsync(async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The ordered flush of the writable state. Caller holds the metadata lock.</summary>
    internal ValueTask FlushLockedAsync(bool async, CancellationToken cancellationToken) =>
        Writes.State.FlushAsync(async, cancellationToken);

    /// <summary>
    /// Runs a public operation that changes the image. When it fails with an I/O error, the steps
    /// it completed may have left clusters referenced by refcounts but by no table (a leak); the
    /// session then keeps the dirty bit at close, so the next read-write open (ours or QEMU's)
    /// repairs them.
    /// </summary>
    private ValueTask Guard(ValueTask operation) => operation.IsCompletedSuccessfully ? operation : GuardSlowAsync(operation);

    /// <inheritdoc cref="Guard(ValueTask)"/>
    private ValueTask<T> Guard<T>(ValueTask<T> operation) => operation.IsCompletedSuccessfully ? operation : GuardSlowAsync(operation);

    private async ValueTask GuardSlowAsync(ValueTask operation)
    {
        try
        {
            await operation.ConfigureAwait(false);
        }
        catch (IOException)
        {
            _writes?.State.Metadata.NoteIoError();
            throw;
        }
    }

    private async ValueTask<T> GuardSlowAsync<T>(ValueTask<T> operation)
    {
        try
        {
            return await operation.ConfigureAwait(false);
        }
        catch (IOException)
        {
            _writes?.State.Metadata.NoteIoError();
            throw;
        }
    }

    private async ValueTask CloseCoreAsync(bool async, CancellationToken cancellationToken)
    {
        if (_writes is not { } writes || _session.Metadata.CorruptionDetected is not null)
        {
            return; // after a refused metadata overwrite nothing more is written, as after a crash
        }

        using (await _session.Metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            foreach (var extension in _session.Extensions)
            {
                extension.Close(new ExtensionHost(this, extension));
            }

            await writes.State.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            if (_session.Bitmaps is { } bitmaps)
            {
                await bitmaps.StoreAsync(_session.Metadata, writes.State.Metadata, async, cancellationToken).ConfigureAwait(false);
                await writes.State.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            }

            await writes.State.Metadata.CloseAsync(async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Opens the extensions, then picks the allocator (the option's, else an extension's, else fresh clusters). Caller holds the metadata lock.</summary>
    internal void OpenExtensionsAndAllocator()
    {
        OpenExtensions();
        var state = Writes.State;
        state.Allocator = _session.Options.Allocator ?? _session.Extensions.Select(e => e.Allocator).FirstOrDefault(a => a is not null) ?? FreshClusterAllocator.Instance;
    }

    /// <summary>Hands every extension its header extension payload and whether its auto-clear bit survived.</summary>
    internal void OpenExtensions()
    {
        var header = _session.Metadata.Header;
        foreach (var extension in _session.Extensions)
        {
            var stored = header.OtherExtensions.FirstOrDefault(e => e.Type == extension.HeaderExtensionType);
            var bitSet = ((ulong)header.Header.Autoclear & (1UL << extension.AutoclearBit)) != 0;
            extension.Open(new ExtensionHost(this, extension), stored?.Data, bitSet);
        }
    }
}
