using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

// Opening, creating and amending images: thin public wrappers over ImageOpener, ImageCreator and Amender.
public sealed partial class Qcow2Image
{
    /// <summary>Opens the qcow2 image at <paramref name="path"/> (read-only unless the options say otherwise).</summary>
    /// <exception cref="InvalidDataException">The image is corrupt; the message names the structure.</exception>
    /// <exception cref="NotSupportedException">The image uses a feature this library does not support.</exception>
    /// <exception cref="FileNotFoundException">The image, its backing file or its data file is missing.</exception>
    public static Qcow2Image Open(string path, Qcow2OpenOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new Qcow2OpenOptions();
        options.Validate();
        return SyncOver.Run(ImageOpener.OpenAsync(FileStorage.Open(path, options.ImageFileOptions), options, ownsStorage: true, new ChainContext(), async: false, CancellationToken.None));
    }

    /// <inheritdoc cref="Open(string, Qcow2OpenOptions?)"/>
    public static ValueTask<Qcow2Image> OpenAsync(string path, Qcow2OpenOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new Qcow2OpenOptions();
        options.Validate();
        return ImageOpener.OpenAsync(FileStorage.Open(path, options.ImageFileOptions), options, ownsStorage: true, new ChainContext(), async: true, cancellationToken);
    }

    /// <summary>
    /// Opens an image held in a seekable stream. Relative backing file names resolve against the
    /// stream's file when it is a <see cref="FileStream"/>, else against the current directory.
    /// </summary>
    public static Qcow2Image Open(Stream stream, Qcow2OpenOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        options ??= new Qcow2OpenOptions();
        var storage = new StreamStorage(stream, options.LeaveOpen, (stream as FileStream)?.Name);
        return SyncOver.Run(ImageOpener.OpenAsync(storage, options, ownsStorage: true, new ChainContext(), async: false, CancellationToken.None));
    }

    /// <summary>Opens an image over any <see cref="IStorage"/> (e.g. one that injects faults in tests).</summary>
    /// <param name="storage">The image bytes.</param>
    /// <param name="options">Open options.</param>
    /// <param name="leaveOpen">Whether disposing the image leaves <paramref name="storage"/> open.</param>
    /// <remarks>
    /// A file's locks belong to its open (<see cref="FileStorage"/> object), not to each image over
    /// it: two images opened over one storage object are not refused, so give each image its own storage.
    /// </remarks>
    public static Qcow2Image Open(IStorage storage, Qcow2OpenOptions? options = null, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(storage);
        return SyncOver.Run(ImageOpener.OpenAsync(storage, options ?? new Qcow2OpenOptions(), !leaveOpen, new ChainContext(), async: false, CancellationToken.None));
    }

    /// <inheritdoc cref="Open(IStorage, Qcow2OpenOptions?, bool)"/>
    public static ValueTask<Qcow2Image> OpenAsync(IStorage storage, Qcow2OpenOptions? options = null, bool leaveOpen = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(storage);
        return ImageOpener.OpenAsync(storage, options ?? new Qcow2OpenOptions(), !leaveOpen, new ChainContext(), async: true, cancellationToken);
    }

    /// <summary>
    /// Follows the backing chain of the image at <paramref name="path"/> from header to header —
    /// names, paths, formats — without opening any layer as an image, and stops where a file is
    /// missing, refused by the backing file policy, or loops, saying why (qemu-img info
    /// --backing-chain, which shows nothing when one file is missing).
    /// </summary>
    /// <param name="path">The image.</param>
    /// <param name="options">Policy, resolver, locking and force-share to follow; opened read-only.</param>
    /// <exception cref="InvalidDataException">The image itself is corrupt.</exception>
    /// <exception cref="FileNotFoundException">The image itself is missing.</exception>
    public static IReadOnlyList<BackingChainLink> ReadBackingChain(string path, Qcow2OpenOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return BackingChainReader.Read(path, options ?? new Qcow2OpenOptions());
    }


    /// <summary>Opens an internal snapshot's disk as a read-only image sharing this image's files.</summary>
    /// <param name="key">The snapshot's id or name, as <paramref name="lookup"/> says.</param>
    /// <param name="lookup">Whether <paramref name="key"/> is an id, a name, or an id else a name (qemu-img convert -s).</param>
    /// <exception cref="KeyNotFoundException">No such snapshot.</exception>
    public Qcow2Image OpenSnapshot(string key, SnapshotLookup lookup)
    {
        ThrowIfDisposed();
        var snapshot = FindSnapshotOrThrow(key, lookup);
        var metadata = _session.Metadata;
        var l1 = SyncOver.Run(L1Table.ReadAsync(metadata.File, snapshot.L1TableOffset, snapshot.L1Size, $"L1 table of snapshot '{snapshot.Name}'", async: false, CancellationToken.None));
        var size = snapshot.DiskSize ?? Size;
        if (Header.Header.L2Coverage * (long)l1.Size < size && size > 0)
        {
            throw Qcow2Corruption.Create("snapshot table entry", $"snapshot '{snapshot.Name}' has {l1.Size} L1 entries, too few for its {size}-byte disk", snapshot.L1TableOffset);
        }

        return new Qcow2Image(_session, new ClusterMap(metadata.Geometry, l1, metadata.L2Cache, () => metadata.FileLength), size);
    }


    /// <summary>
    /// Creates a qcow2 image as qemu-img create does — header in cluster 0, refcount table in
    /// cluster 1, its first block in cluster 2, the L1 table after them — and returns it open for
    /// writing. An existing file is overwritten.
    /// </summary>
    /// <exception cref="ArgumentException">The options contradict each other or qcow2's limits.</exception>
    public static Qcow2Image Create(string path, Qcow2CreateOptions options)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(options);
        var fullPath = FilePaths.Absolute(path);
        ImageCreator.RefuseSelfReference(options, fullPath);
        var resolved = ImageCreator.ResolveSize(options, fullPath);
        ImageCreator.Validate(options, resolved.Size);
        var openOptions = options.OpenOptions ?? new Qcow2OpenOptions();

        // Locked before it is emptied: a file anyone is using (the source of a conversion, a
        // running VM's disk) is refused untouched.
        var storage = FileStorage.Create(fullPath, new FileStorageOptions { Writable = true, Lock = FileLockRequest.Image(writable: true), Locking = openOptions.Locking });
        try
        {
            return ImageCreator.Create(storage, options, leaveOpen: false, checkedPath: fullPath, resolved);
        }
        catch (Exception) when (File.Exists(fullPath))
        {
            File.Delete(fullPath); // we emptied it: a half-made image is worse than none
            throw;
        }
    }

    /// <summary>Creates a qcow2 image in <paramref name="storage"/> (its content is replaced).</summary>
    /// <param name="storage">Where the image goes; its Path, if any, anchors relative backing and data file names.</param>
    /// <param name="options">Create options.</param>
    /// <param name="leaveOpen">Whether disposing the image leaves <paramref name="storage"/> open.</param>
    public static Qcow2Image Create(IStorage storage, Qcow2CreateOptions options, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(storage);
        ArgumentNullException.ThrowIfNull(options);
        var resolved = ImageCreator.ResolveSize(options, storage.Path);
        ImageCreator.Validate(options, resolved.Size);
        return ImageCreator.Create(storage, options, leaveOpen, checkedPath: null, resolved);
    }

    /// <summary>
    /// Changes an existing image's format options in place (qemu-img amend): upgrade or downgrade
    /// the version (a downgrade turns zero clusters into zero-filled data), change the refcount
    /// width (the refcount structure is rebuilt), toggle lazy refcounts, resize. Guest data is unchanged.
    /// </summary>
    /// <param name="path">The image.</param>
    /// <param name="options">What to change.</param>
    /// <param name="openOptions">Makes the options for each read-write open of the image (e.g. with dedup); null for defaults.</param>
    /// <exception cref="NotSupportedException">The image uses a feature the target version cannot express.</exception>
    /// <exception cref="InvalidOperationException">A refcount does not fit the new width, or the image has errors.</exception>
    public static void Amend(string path, Qcow2AmendOptions options, Func<Qcow2OpenOptions>? openOptions = null)
    {
        Amender.Amend(path, options, openOptions);
    }
}
