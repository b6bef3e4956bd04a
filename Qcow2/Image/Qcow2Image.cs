using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// An open qcow2 image. Safe to use from many threads at once, like a block device: metadata is
/// guarded by one lock, guest data moves outside it, and requests on the same clusters are
/// serialized. Read-only unless opened with <see cref="Qcow2OpenOptions.Writable"/>.
/// </summary>
public sealed partial class Qcow2Image : IDisposable, IAsyncDisposable, IGuestDisk
{
    private readonly ImageSession _session;
    private readonly GuestReader _reader;
    private readonly long _viewSize;
    private readonly bool _isSnapshotView;
    private WriteSession? _writes;
    private Qcow2Stream? _content;
    private int _disposed;

    /// <summary>The image itself, through its active L1 table.</summary>
    internal Qcow2Image(ImageSession session)
    {
        var metadata = session.Metadata;
        _session = session;
        _reader = new GuestReader(session, new ClusterMap(metadata.Geometry, metadata.ActiveL1, metadata.L2Cache, () => metadata.FileLength), lockRanges: metadata.Writable);
    }

    /// <summary>A read-only view of an internal snapshot's disk, sharing the image's session.</summary>
    private Qcow2Image(ImageSession session, ClusterMap snapshotMap, long size)
    {
        _session = session;
        _reader = new GuestReader(session, snapshotMap, lockRanges: false);
        _viewSize = size;
        _isSnapshotView = true;
    }

    /// <summary>Guest-visible size in bytes.</summary>
    public long Size => _isSnapshotView ? _viewSize : _session.Metadata.Header.Header.Size;

    /// <summary>Whether writes are allowed.</summary>
    public bool IsWritable => _writes is not null && !_isSnapshotView;

    /// <summary>Full path of the image file, when it has one.</summary>
    public string? FilePath => _session.File.Path;

    /// <summary>Cluster size in bytes.</summary>
    public int ClusterSize => _session.Metadata.Geometry.ClusterSize;

    /// <summary>The decoded header of cluster 0.</summary>
    public HeaderCluster Header => _session.Metadata.Header;

    /// <summary>Facts about the image, as qemu-img info shows them.</summary>
    public ImageInfo Info
    {
        get
        {
            var header = _session.Metadata.Header;
            var fixedHeader = header.Header;
            return new ImageInfo
            {
                FileName = _session.File.Path,
                VirtualSize = Size,
                ClusterSize = fixedHeader.ClusterSize,
                Version = fixedHeader.Version,
                RefcountBits = fixedHeader.RefcountBits,
                CompressionType = fixedHeader.CompressionType,
                IncompatibleFeatures = fixedHeader.Incompatible,
                CompatibleFeatures = fixedHeader.Compatible,
                AutoclearFeatures = fixedHeader.Autoclear,
                Encryption = fixedHeader.CryptMethod,
                BackingFileName = header.BackingFileName,
                BackingFormat = header.BackingFormat,
                DataFile = header.ExternalDataFileName,
                ActualSize = FileSystemInfoProbe.AllocatedBytes(_session.File),
                UnknownExtensions = [.. header.OtherExtensions.Where(e => _session.Extensions.All(x => x.HeaderExtensionType != e.Type))],
                ExtensionAutoclearBits = _session.Extensions.Aggregate(0UL, (bits, x) => bits | (1UL << x.AutoclearBit)),
                FeatureNames = header.FeatureNames,
            };
        }
    }

    /// <summary>Internal snapshots, in table order.</summary>
    public IReadOnlyList<SnapshotTableEntry> Snapshots => _session.Metadata.Snapshots;

    /// <summary>Persistent bitmaps listed in the bitmap directory.</summary>
    public IReadOnlyList<BitmapDirectoryEntry> Bitmaps => _session.Metadata.Bitmaps;

    /// <summary>This image (depth 0) followed by every backing file, top to bottom.</summary>
    public IReadOnlyList<BackingChainEntry> BackingChain
    {
        get
        {
            var chain = new List<BackingChainEntry> { new(0, _session.File.Path ?? "(stream)", "qcow2", _session.File.Path, Size) };
            var name = _session.Metadata.Header.BackingFileName;
            for (IGuestDisk? disk = _session.Backing; disk is not null; disk = disk.BackingDisk)
            {
                chain.Add(new BackingChainEntry(chain.Count, name ?? disk.FilePath ?? "?", disk.Format, disk.FilePath, disk.Size));
                name = (disk as Qcow2Image)?.Header.BackingFileName;
            }

            return chain;
        }
    }

    /// <summary>
    /// The guest disk as a seekable stream (Length = <see cref="Size"/>). Disposing it leaves the
    /// image open. It keeps one position, so give each thread its own stream from
    /// <see cref="OpenStream"/>.
    /// </summary>
    public Stream Content => _content ??= new Qcow2Stream(this, leaveOpen: true);

    string IGuestDisk.Format => "qcow2";

    string? IGuestDisk.FilePath => _session.File.Path;

    IGuestDisk? IGuestDisk.BackingDisk => _session.Backing;

    IStorage IGuestDisk.File => _session.File;

    internal ImageSession Session => _session;

    internal GuestReader Reader => _reader;

    /// <summary>The write side; throws for a read-only image, a snapshot view, or one marked corrupt.</summary>
    private WriteSession Writes
    {
        get
        {
            if (_writes is not { } writes || _isSnapshotView)
            {
                throw new NotSupportedException(_isSnapshotView ? "Snapshot views are read-only." : "The image was opened read-only.");
            }

            if (_session.Metadata.CorruptionDetected is { } problem)
            {
                throw Qcow2Corruption.Create("image", $"it was marked corrupt and takes no more writes ({problem})");
            }

            return writes;
        }
    }

    /// <summary>The writable state of a read-write image, else null.</summary>
    internal WritableState? WritableState => _writes?.State;

    /// <summary>Gives a read-write image its write side, once, while it opens.</summary>
    internal void AttachWrites(WriteSession writes) => _writes = writes;

    /// <summary>
    /// Whether <paramref name="path"/> is a file this image reads or writes: the image file, its
    /// data file, or any file of its backing chain (same device and inode, so links count too).
    /// Writing such a file — converting an image onto its own backing file, say — destroys data
    /// the image still needs, whatever the locks say.
    /// </summary>
    /// <param name="path">The file to test; a missing file is never in use.</param>
    public bool UsesFile(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ThrowIfDisposed();
        if (!File.Exists(path))
        {
            return false;
        }

        for (IGuestDisk? disk = this; disk is not null; disk = disk.BackingDisk)
        {
            if (ChainOperations.FilesOf(disk).Any(file => file.Path is { } used && FileStorage.IsSameFile(used, path)))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// A new stream over the guest disk with its own position. Disposing it flushes what was
    /// written through it; by default it leaves this image open, so the image must still be
    /// disposed. To hand a disk to code that disposes only the stream, pass
    /// <c>leaveOpen: false</c> or use <see cref="Qcow2Stream.Open"/> / <see cref="Qcow2Stream.Create"/>.
    /// </summary>
    /// <param name="leaveOpen">Whether disposing the stream leaves this image open.</param>
    public Qcow2Stream OpenStream(bool leaveOpen = true) => new(this, leaveOpen);

    /// <summary>Flushes pending changes and closes the image and every file it opened.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            if (!_isSnapshotView)
            {
                SyncOver.Run(CloseCoreAsync(async: false, CancellationToken.None));
            }
        }
        finally
        {
            if (!_isSnapshotView)
            {
                _session.Dispose();
            }
        }
    }

    /// <inheritdoc cref="Dispose"/>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            if (!_isSnapshotView)
            {
                await CloseCoreAsync(async: true, CancellationToken.None).ConfigureAwait(false);
            }
        }
        finally
        {
            if (!_isSnapshotView)
            {
                _session.Dispose();
            }
        }
    }

    /// <summary>Whether <see cref="Dispose"/> ran (a stream that outlives its image must not flush it).</summary>
    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    private void ThrowIfOutOfRange(long offset, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"The range [{offset}, {offset + length}) extends past the end of the {Size}-byte disk.");
        }
    }
}
