using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    private const int ChainCopyChunk = 1 << 20;

    /// <summary>
    /// Writes what this overlay holds into its backing file (qemu-img commit): allocated ranges are
    /// copied, zero ranges become zeros, the backing file grows when it is smaller, and afterwards
    /// the overlay is emptied unless <paramref name="keepOverlay"/> (qemu-img commit -d).
    /// </summary>
    /// <param name="keepOverlay">Leave the overlay's data in place.</param>
    /// <param name="backingOptions">Options to open the backing file read-write with (e.g. with dedup); null for defaults.</param>
    /// <param name="progress">Receives the fraction done.</param>
    /// <exception cref="InvalidOperationException">The image has no backing file.</exception>
    public void Commit(bool keepOverlay = false, Qcow2OpenOptions? backingOptions = null, IProgress<double>? progress = null)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(CommitCoreAsync(keepOverlay, backingOptions, progress, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Commit"/>
    public ValueTask CommitAsync(bool keepOverlay = false, Qcow2OpenOptions? backingOptions = null, IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(CommitCoreAsync(keepOverlay, backingOptions, progress, async: true, cancellationToken));
    }

    /// <summary>
    /// Points the image at another backing file (or none) without changing what the guest sees
    /// (qemu-img rebase): wherever the image itself holds nothing and the old and new backing
    /// files differ, the old content is copied into the image first. With
    /// <paramref name="unsafeRebase"/> only the header changes (qemu-img rebase -u).
    /// </summary>
    /// <param name="backingFile">The new backing file name as it should be stored (relative names resolve against the image's directory), or null for none.</param>
    /// <param name="backingFormat">Its format ("qcow2" or "raw"), or null to probe it.</param>
    /// <param name="unsafeRebase">Only rewrite the name; what shows through may change.</param>
    /// <param name="progress">Receives the fraction done.</param>
    public void Rebase(string? backingFile, string? backingFormat, bool unsafeRebase = false, IProgress<double>? progress = null)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(RebaseCoreAsync(backingFile, backingFormat, unsafeRebase, progress, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Rebase"/>
    public ValueTask RebaseAsync(string? backingFile, string? backingFormat, bool unsafeRebase = false, IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(RebaseCoreAsync(backingFile, backingFormat, unsafeRebase, progress, async: true, cancellationToken));
    }

    private async ValueTask CommitCoreAsync(bool keepOverlay, Qcow2OpenOptions? backingOptions, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        var name = _core.Header.BackingFileName ?? throw new InvalidOperationException("The image has no backing file to commit into.");
        var format = _core.Header.BackingFormat ?? _core.Backing?.Format;

        // Our read-only view of the backing file forbids writers, as QEMU's does; where QEMU
        // reopens that view read-write for a commit, ours shares the file while the commit
        // writes through a second open, and is opened afresh afterwards.
        foreach (var file in FilesOf(_core.Backing))
        {
            file.Lock(FileLockRequest.ForceShared, _core.Options.Locking);
        }

        CommitTarget? target = null;
        try
        {
            var storage = OpenImplicitFile(new FileReference(name, FileReferenceKind.BackingFile, _core.File.Path, Writable: true), _core.Options);
            var chain = new ChainContext();
            chain.Enter(_core.File);
            try
            {
                chain.CheckCanEnter(storage, name); // never commit an image into itself, whatever the locks say
            }
            catch
            {
                storage.Dispose();
                throw;
            }

            target = await CommitTarget.OpenAsync(storage, format, backingOptions ?? InheritedOptions(_core.Options), _core.Options.Locking, async, cancellationToken).ConfigureAwait(false);
            await CopyIntoAsync(target, progress, async, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            target?.Dispose();

            // The read-only view cached what the backing file held before: open it afresh.
            using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                await ReopenBackingLockedAsync(async, cancellationToken).ConfigureAwait(false);
            }
        }

        if (!keepOverlay)
        {
            await MakeEmptyCoreAsync(async, cancellationToken).ConfigureAwait(false);
        }

        progress?.Report(1);
    }

    /// <summary>The files a layer writes when it is written: its image file and its external data file.</summary>
    private static IEnumerable<IStorage> FilesOf(IGuestDisk? disk) => disk switch
    {
        null => [],
        Qcow2Image image when !ReferenceEquals(image._core.DataFile, image._core.File) => [image._core.File, image._core.DataFile],
        _ => [disk.File],
    };

    /// <summary>Copies what this overlay holds (allocated and zero ranges) into the commit target, growing it first.</summary>
    private async ValueTask CopyIntoAsync(CommitTarget target, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        if (target.Size < Size)
        {
            await target.GrowAsync(Size, async, cancellationToken).ConfigureAwait(false);
        }

        var buffer = new byte[ChainCopyChunk];
        foreach (var extent in GetExtents(0, Size))
        {
            if (extent.Kind is not (ExtentKind.Allocated or ExtentKind.Zero))
            {
                continue; // not this overlay's: the backing file already holds it
            }

            for (var done = 0L; done < extent.Length;)
            {
                var count = (int)Math.Min(buffer.Length, extent.Length - done);
                var chunk = buffer.AsMemory(0, count);
                var offset = extent.Start + done;
                if (extent.Kind == ExtentKind.Zero)
                {
                    await target.WriteZeroesAsync(offset, count, async, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ReadCoreAsync(offset, chunk, async, cancellationToken).ConfigureAwait(false);
                    await target.WriteAsync(offset, chunk, async, cancellationToken).ConfigureAwait(false);
                }

                done += count;
                progress?.Report((double)(offset + count) / Math.Max(1, Size));
            }
        }

        await target.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask RebaseCoreAsync(string? backingFile, string? backingFormat, bool unsafeRebase, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        backingFile = string.IsNullOrEmpty(backingFile) ? null : backingFile;
        if (!unsafeRebase)
        {
            IGuestDisk? newBacking = null;
            if (backingFile is not null)
            {
                var chain = new ChainContext();
                chain.Enter(_core.File);
                newBacking = await OpenBackingAsync(backingFile, backingFormat, _core.File.Path, _core.Options, chain, async, cancellationToken).ConfigureAwait(false);
                backingFormat ??= newBacking.Format;
            }

            try
            {
                await CopyWhatTheNewBackingChangesAsync(newBacking, progress, async, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                newBacking?.Dispose();
            }
        }

        await SetBackingFileCoreAsync(backingFile, backingFormat, async, cancellationToken).ConfigureAwait(false);
        progress?.Report(1);
    }

    /// <summary>Copies into the image every range it does not hold itself where the old and new backing contents differ.</summary>
    private async ValueTask CopyWhatTheNewBackingChangesAsync(IGuestDisk? newBacking, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        var clusterSize = _core.Geometry.ClusterSize;
        var oldBytes = new byte[clusterSize];
        var newBytes = new byte[clusterSize];
        foreach (var extent in GetExtents(0, Size))
        {
            if (extent.Kind is ExtentKind.Allocated or ExtentKind.Zero)
            {
                continue; // the image's own bytes hide both backing files
            }

            for (var offset = extent.Start; offset < extent.End;)
            {
                var count = (int)Math.Min(clusterSize - (offset % clusterSize), extent.End - offset);
                var before = oldBytes.AsMemory(0, count);
                var after = newBytes.AsMemory(0, count);
                await ReadCoreAsync(offset, before, async, cancellationToken).ConfigureAwait(false);
                after.Span.Clear();
                if (newBacking is not null && offset < newBacking.Size)
                {
                    await newBacking.ReadAsync(offset, after, async, cancellationToken).ConfigureAwait(false);
                }

                if (!before.Span.SequenceEqual(after.Span))
                {
                    if (before.Span.ContainsAnyExcept((byte)0))
                    {
                        await WriteCoreAsync(offset, before, async, cancellationToken).ConfigureAwait(false);
                    }
                    else
                    {
                        await WriteZeroesCoreAsync(offset, count, unmap: false, async, cancellationToken).ConfigureAwait(false);
                    }
                }

                offset += count;
                progress?.Report((double)offset / Math.Max(1, Size));
            }
        }
    }

    /// <summary>Replaces the read-only view of the backing file with a fresh one. Caller holds the metadata lock.</summary>
    private async ValueTask ReopenBackingLockedAsync(bool async, CancellationToken cancellationToken)
    {
        if (_core.Header.BackingFileName is not { } name || _core.Options.BackingFiles != BackingFileMode.Open)
        {
            return;
        }

        var chain = new ChainContext();
        chain.Enter(_core.File);
        var fresh = await OpenBackingAsync(name, _core.Header.BackingFormat, _core.File.Path, _core.Options, chain, async, cancellationToken).ConfigureAwait(false);
        _core.Backing?.Dispose();
        _core.Backing = fresh;
    }

    /// <summary>The backing file opened read-write for a commit: a qcow2 image or a raw file.</summary>
    private sealed class CommitTarget : IDisposable
    {
        private readonly Qcow2Image? _image;
        private readonly IStorage? _raw;

        private CommitTarget(Qcow2Image? image, IStorage? raw)
        {
            _image = image;
            _raw = raw;
        }

        public long Size => _image?.Size ?? _raw!.Length;

        public static async ValueTask<CommitTarget> OpenAsync(IStorage storage, string? format, Qcow2OpenOptions options, FileLocking locking, bool async, CancellationToken cancellationToken)
        {
            try
            {
                format ??= await ProbeFormatAsync(storage, async, cancellationToken).ConfigureAwait(false);
                switch (format)
                {
                    case "qcow2":
                        var image = await OpenCoreAsync(storage, options with { Writable = true }, ownsStorage: true, new ChainContext(), async, cancellationToken).ConfigureAwait(false);
                        return new CommitTarget(image, null);
                    case "raw":
                        storage.Lock(FileLockRequest.RawFile(writable: true), locking);
                        return new CommitTarget(null, storage);
                    default:
                        throw new NotSupportedException($"Cannot commit into a backing file of format '{format}'.");
                }
            }
            catch
            {
                storage.Dispose();
                throw;
            }
        }

        public async ValueTask GrowAsync(long size, bool async, CancellationToken cancellationToken)
        {
            if (_image is not null)
            {
                await _image.ResizeCoreAsync(size, allowShrink: false, async, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                _raw!.SetLength(size);
            }
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken) =>
            _image is not null ? _image.WriteCoreAsync(offset, data, async, cancellationToken) : _raw!.WriteAsync(offset, data, async, cancellationToken);

        public ValueTask WriteZeroesAsync(long offset, int count, bool async, CancellationToken cancellationToken) =>
            _image is not null
                ? _image.WriteZeroesCoreAsync(offset, count, unmap: false, async, cancellationToken)
                : _raw!.WriteAsync(offset, new byte[count], async, cancellationToken);

        public ValueTask FlushAsync(bool async, CancellationToken cancellationToken) =>
            _image is not null ? _image.FlushCoreAsync(async, cancellationToken) : _raw!.FlushAsync(async, cancellationToken);

        public void Dispose()
        {
            if (_image is not null)
            {
                _image.Dispose();
            }
            else
            {
                _raw!.Dispose();
            }
        }
    }
}
