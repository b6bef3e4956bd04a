using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// Operations on the backing chain: commit into the backing file, rebase onto another, and the
/// header-only backing file change. They work through the image's own read and write paths.
/// </summary>
internal sealed class ChainOperations(Qcow2Image image, ImageSession session)
{
    private const int ChainCopyChunk = 1 << 20;
    private readonly ImageSession _session = session;
    private readonly ImageMetadata _metadata = session.Metadata;

    private long Size => image.Size;

    public async ValueTask SetBackingFileAsync(string? name, string? format, bool async, CancellationToken cancellationToken)
    {
        if (name is not null && (_metadata.Header.Header.Autoclear & AutoclearFeatures.RawExternalData) != 0)
        {
            throw new InvalidOperationException("An image whose data file is raw cannot have a backing file.");
        }

        // qemu-img rebase -u accepts this and leaves an image no one can open; refuse it even unsafely.
        if (name is not null && _metadata.File.Path is { } self && DefaultBackingFileResolver.TryResolvePath(name, self) is { } target && FileStorage.IsSameFile(target, self))
        {
            throw new InvalidOperationException($"'{name}' is {self} itself; an image cannot be its own backing file.");
        }

        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        IGuestDisk? backing = null;
        if (name is not null && _session.Options.BackingFiles == BackingFileMode.Open)
        {
            var chain = new ChainContext();
            chain.Enter(_metadata.File);
            backing = await ImageOpener.OpenBackingAsync(name, format, _metadata.File.Path, _session.Options, chain, async, cancellationToken).ConfigureAwait(false);
        }

        await image.FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await _metadata.RewriteHeaderAsync(_metadata.Header with { BackingFileName = name, BackingFormat = name is null ? null : format }, async, cancellationToken).ConfigureAwait(false);
        _session.Backing?.Dispose();
        _session.Backing = backing;
    }

    public async ValueTask CommitAsync(bool keepOverlay, Qcow2OpenOptions? backingOptions, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        var name = _metadata.Header.BackingFileName ?? throw new InvalidOperationException("Image does not have a backing file");
        var format = _metadata.Header.BackingFormat ?? _session.Backing?.Format;

        // Our read-only view of the backing file forbids writers, as QEMU's does; where QEMU
        // reopens that view read-write for a commit, ours shares the file while the commit
        // writes through a second open, and is opened afresh afterwards.
        foreach (var file in FilesOf(_session.Backing))
        {
            file.Lock(FileLockRequest.ForceShared, _session.Options.Locking);
        }

        CommitTarget? target = null;
        try
        {
            var storage = ImageOpener.OpenImplicitFile(new FileReference(name, FileReferenceKind.BackingFile, _metadata.File.Path, Writable: true), _session.Options);
            var chain = new ChainContext();
            chain.Enter(_metadata.File);
            try
            {
                chain.CheckCanEnter(storage, name); // never commit an image into itself, whatever the locks say
            }
            catch
            {
                storage.Dispose();
                throw;
            }

            target = await CommitTarget.OpenAsync(storage, format, backingOptions ?? ImageOpener.InheritedOptions(_session.Options), _session.Options.Locking, async, cancellationToken).ConfigureAwait(false);
            await CopyIntoAsync(target, progress, async, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            target?.Dispose();

            // The read-only view cached what the backing file held before: open it afresh.
            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                await ReopenBackingLockedAsync(async, cancellationToken).ConfigureAwait(false);
            }
        }

        if (!keepOverlay)
        {
            await image.MakeEmptyCoreAsync(async, cancellationToken).ConfigureAwait(false);
        }

        progress?.Report(1);
    }

    /// <summary>The files a layer writes when it is written: its image file and its external data file.</summary>
    public static IEnumerable<IStorage> FilesOf(IGuestDisk? disk) => disk switch
    {
        null => [],
        Qcow2Image image when !ReferenceEquals(image.Session.GuestDataFile, image.Session.File) => [image.Session.File, image.Session.GuestDataFile],
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
        foreach (var extent in image.GetExtents(0, Size))
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
                    await image.ReadCoreAsync(offset, chunk, async, cancellationToken).ConfigureAwait(false);
                    await target.WriteAsync(offset, chunk, async, cancellationToken).ConfigureAwait(false);
                }

                done += count;
                progress?.Report((double)(offset + count) / Math.Max(1, Size));
            }
        }

        await target.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask RebaseAsync(string? backingFile, string? backingFormat, bool unsafeRebase, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        backingFile = string.IsNullOrEmpty(backingFile) ? null : backingFile;
        if (!unsafeRebase)
        {
            IGuestDisk? newBacking = null;
            if (backingFile is not null)
            {
                var chain = new ChainContext();
                chain.Enter(_metadata.File);
                newBacking = await ImageOpener.OpenBackingAsync(backingFile, backingFormat, _metadata.File.Path, _session.Options, chain, async, cancellationToken).ConfigureAwait(false);
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

        await SetBackingFileAsync(backingFile, backingFormat, async, cancellationToken).ConfigureAwait(false);
        progress?.Report(1);
    }

    /// <summary>Copies into the image every range it does not hold itself where the old and new backing contents differ.</summary>
    private async ValueTask CopyWhatTheNewBackingChangesAsync(IGuestDisk? newBacking, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        var clusterSize = _metadata.Geometry.ClusterSize;
        var oldBytes = new byte[clusterSize];
        var newBytes = new byte[clusterSize];
        foreach (var extent in image.GetExtents(0, Size))
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
                await image.ReadCoreAsync(offset, before, async, cancellationToken).ConfigureAwait(false);
                after.Span.Clear();
                if (newBacking is not null && offset < newBacking.Size)
                {
                    await newBacking.ReadAsync(offset, after, async, cancellationToken).ConfigureAwait(false);
                }

                if (!before.Span.SequenceEqual(after.Span))
                {
                    if (before.Span.ContainsAnyExcept((byte)0))
                    {
                        await image.WriteCoreAsync(offset, before, async, cancellationToken).ConfigureAwait(false);
                    }
                    else
                    {
                        await image.WriteZeroesCoreAsync(offset, count, unmap: false, async, cancellationToken).ConfigureAwait(false);
                    }
                }

                offset += count;
                progress?.Report((double)offset / Math.Max(1, Size));
            }
        }
    }

    /// <summary>Replaces the read-only view of the backing file with a fresh one. Caller holds the metadata lock.</summary>
    public async ValueTask ReopenBackingLockedAsync(bool async, CancellationToken cancellationToken)
    {
        if (_metadata.Header.BackingFileName is not { } name || _session.Options.BackingFiles != BackingFileMode.Open)
        {
            return;
        }

        var chain = new ChainContext();
        chain.Enter(_metadata.File);
        var fresh = await ImageOpener.OpenBackingAsync(name, _metadata.Header.BackingFormat, _metadata.File.Path, _session.Options, chain, async, cancellationToken).ConfigureAwait(false);
        _session.Backing?.Dispose();
        _session.Backing = fresh;
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
                format ??= await ImageOpener.ProbeFormatAsync(storage, async, cancellationToken).ConfigureAwait(false);
                switch (format)
                {
                    case "qcow2":
                        var image = await ImageOpener.OpenAsync(storage, options with { Writable = true }, ownsStorage: true, new ChainContext(), async, cancellationToken).ConfigureAwait(false);
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
