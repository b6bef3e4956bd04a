using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

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
        return SyncOver.Run(OpenCoreAsync(FileStorage.Open(path, options.ImageFileOptions), options, ownsStorage: true, new ChainContext(), async: false, CancellationToken.None));
    }

    /// <inheritdoc cref="Open(string, Qcow2OpenOptions?)"/>
    public static ValueTask<Qcow2Image> OpenAsync(string path, Qcow2OpenOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new Qcow2OpenOptions();
        options.Validate();
        return OpenCoreAsync(FileStorage.Open(path, options.ImageFileOptions), options, ownsStorage: true, new ChainContext(), async: true, cancellationToken);
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
        return SyncOver.Run(OpenCoreAsync(storage, options, ownsStorage: true, new ChainContext(), async: false, CancellationToken.None));
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
        return SyncOver.Run(OpenCoreAsync(storage, options ?? new Qcow2OpenOptions(), !leaveOpen, new ChainContext(), async: false, CancellationToken.None));
    }

    /// <inheritdoc cref="Open(IStorage, Qcow2OpenOptions?, bool)"/>
    public static ValueTask<Qcow2Image> OpenAsync(IStorage storage, Qcow2OpenOptions? options = null, bool leaveOpen = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(storage);
        return OpenCoreAsync(storage, options ?? new Qcow2OpenOptions(), !leaveOpen, new ChainContext(), async: true, cancellationToken);
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
        var l1 = SyncOver.Run(L1Table.ReadAsync(_core.File, snapshot.L1TableOffset, snapshot.L1Size, $"L1 table of snapshot '{snapshot.Name}'", async: false, CancellationToken.None));
        var size = snapshot.DiskSize ?? Size;
        if (Header.Header.L2Coverage * (long)l1.Size < size && size > 0)
        {
            throw Qcow2Corruption.Create("snapshot table entry", $"snapshot '{snapshot.Name}' has {l1.Size} L1 entries, too few for its {size}-byte disk", snapshot.L1TableOffset);
        }

        return new Qcow2Image(_core, new ClusterMap(_core.Geometry, l1, _core.L2Cache, () => _core.FileLength), size, isSnapshotView: true);
    }

    /// <summary>Opens an image from its storage. With <paramref name="deferExtensions"/>, Create opens the extensions itself once the disk has its size.</summary>
    internal static async ValueTask<Qcow2Image> OpenCoreAsync(IStorage storage, Qcow2OpenOptions options, bool ownsStorage, ChainContext chain, bool async, CancellationToken cancellationToken, bool deferExtensions = false)
    {
        ImageCore? core = null;
        try
        {
            options.Validate();
            storage.Lock(options.ImageLock, options.Locking); // before the first byte is read, as QEMU
            chain.Enter(storage);
            var header = await ReadHeaderClusterAsync(storage, async, cancellationToken).ConfigureAwait(false);
            HeaderValidator.ValidateLayout(header);
            HeaderValidator.ValidateIncompatibleFeatures(header);
            CheckOpenable(header, storage, options);

            core = new ImageCore(storage, header, options, ownsStorage);
            core.ActiveL1 = await L1Table.ReadAsync(storage, header.Header.L1TableOffset, header.Header.L1Size, "active L1 table", async, cancellationToken, core.ReadsTablesPastEndAsZeros).ConfigureAwait(false);
            core.Snapshots = await ReadSnapshotTableAsync(storage, header.Header, async, cancellationToken).ConfigureAwait(false);
            core.Bitmaps = await ReadBitmapDirectoryAsync(storage, header, async, cancellationToken).ConfigureAwait(false);
            if (header.Header.HasExternalDataFile)
            {
                core.DataFile = OpenDataFile(header, storage.Path, options);
            }

            if (header.BackingFileName is { } backingName && options.BackingFiles == BackingFileMode.Open)
            {
                core.Backing = await OpenBackingAsync(backingName, header.BackingFormat, storage.Path, options, chain, async, cancellationToken).ConfigureAwait(false);
            }

            var image = new Qcow2Image(core, new ClusterMap(core.Geometry, core.ActiveL1, core.L2Cache, () => core.FileLength), header.Header.Size, isSnapshotView: false);
            if (options.Writable)
            {
                await image.PrepareForWritingAsync(deferExtensions, async, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                using (await core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
                {
                    image.OpenExtensions();
                }
            }

            return image;
        }
        catch
        {
            if (core is not null)
            {
                core.Dispose();
            }
            else if (ownsStorage)
            {
                storage.Dispose();
            }

            throw;
        }
    }

    /// <summary>Reads and decodes cluster 0.</summary>
    internal static async ValueTask<HeaderCluster> ReadHeaderClusterAsync(IStorage storage, bool async, CancellationToken cancellationToken)
    {
        var length = storage.Length;
        var start = new byte[Qcow2Header.MinimumReadLength];
        var read = await storage.ReadAsync(0, start, async, cancellationToken).ConfigureAwait(false);
        if (read < 4 || BinaryPrimitives.ReadUInt32BigEndian(start) != Qcow2Layout.Magic)
        {
            throw Qcow2Corruption.Create("header", read < 4 ? $"the file is only {length} bytes long" : $"magic is 0x{BinaryPrimitives.ReadUInt32BigEndian(start):x8}, so this is not a qcow2 image", 0);
        }

        if (read < Qcow2Layout.V2HeaderLength)
        {
            throw Qcow2Corruption.Create("header", $"the file is only {length} bytes long, shorter than the {Qcow2Layout.V2HeaderLength}-byte header", 0);
        }

        var clusterBits = BinaryPrimitives.ReadUInt32BigEndian(start.AsSpan(Qcow2Header.ClusterBitsOffset));
        if (clusterBits is < Qcow2Layout.MinClusterBits or > Qcow2Layout.MaxClusterBits)
        {
            throw Qcow2Corruption.Create("header", $"cluster_bits {clusterBits} is outside {Qcow2Layout.MinClusterBits}..{Qcow2Layout.MaxClusterBits}", Qcow2Header.ClusterBitsOffset);
        }

        var cluster0 = new byte[1 << (int)clusterBits];
        var available = await storage.ReadAsync(0, cluster0, async, cancellationToken).ConfigureAwait(false);
        var header = HeaderCluster.Parse(cluster0);
        var headerLength = header.Header.Version == 2 ? Qcow2Layout.V2HeaderLength : header.Header.HeaderLength;
        if (available < headerLength)
        {
            throw Qcow2Corruption.Create("header", $"the file is only {length} bytes long, shorter than its {headerLength}-byte header", 0);
        }

        return header;
    }

    private static void CheckOpenable(HeaderCluster header, IStorage storage, Qcow2OpenOptions options)
    {
        var fixedHeader = header.Header;
        if (!options.Writable)
        {
            return;
        }

        if (fixedHeader.CryptMethod != EncryptionMethod.None)
        {
            throw EncryptionUnsupported(fixedHeader.CryptMethod);
        }

        if (!storage.CanWrite)
        {
            throw new ArgumentException("The image was asked to open for writing but its storage is read-only.", nameof(options));
        }

        if ((fixedHeader.Incompatible & IncompatibleFeatures.Corrupt) != 0 && !options.ForRepair)
        {
            throw Qcow2Corruption.Create("header", "the corrupt bit is set, so the image can only be opened read-only (or repaired with check -r all)", Qcow2Header.IncompatibleFeaturesOffset);
        }
    }

    /// <summary>Encrypted images open for their metadata only; guest data stays out of reach.</summary>
    private static NotSupportedException EncryptionUnsupported(EncryptionMethod method) =>
        new($"The image is encrypted ({(method == EncryptionMethod.Aes ? "legacy AES" : "LUKS")}); reading or writing the guest data of encrypted qcow2 images is not supported.");

    private static async ValueTask<IReadOnlyList<SnapshotTableEntry>> ReadSnapshotTableAsync(IStorage storage, Qcow2Header header, bool async, CancellationToken cancellationToken)
    {
        if (header.SnapshotCount == 0)
        {
            return [];
        }

        var available = Math.Min(Qcow2Layout.MaxSnapshotTableBytes, storage.Length - header.SnapshotsOffset);
        if (available <= 0)
        {
            throw Qcow2Corruption.Create("snapshot table", "lies past the end of the file", header.SnapshotsOffset);
        }

        var size = (int)Math.Min(available, Math.Max(64 * 1024, header.SnapshotCount * 128L));
        var buffer = new byte[size];
        await storage.ReadStructureAsync(header.SnapshotsOffset, buffer, "snapshot table", async, cancellationToken).ConfigureAwait(false);
        var entries = new List<SnapshotTableEntry>(header.SnapshotCount);
        var position = 0;
        for (var i = 0; i < header.SnapshotCount; i++)
        {
            SnapshotTableEntry? entry;
            int needed;
            while (!SnapshotTableEntry.TryParse(buffer.AsSpan(position), header.SnapshotsOffset + position, out entry, out needed))
            {
                if (buffer.Length >= available)
                {
                    throw Qcow2Corruption.Create("snapshot table", $"entry {i} extends past the end of the file or the {Qcow2Layout.MaxSnapshotTableBytes >> 20} MiB limit", header.SnapshotsOffset + position);
                }

                var grown = new byte[(int)Math.Min(available, Math.Max((long)buffer.Length * 2, position + (long)needed))];
                await storage.ReadStructureAsync(header.SnapshotsOffset, grown, "snapshot table", async, cancellationToken).ConfigureAwait(false);
                buffer = grown;
            }

            entries.Add(entry!);
            position += needed;
        }

        return entries;
    }

    private static async ValueTask<IReadOnlyList<BitmapDirectoryEntry>> ReadBitmapDirectoryAsync(IStorage storage, HeaderCluster header, bool async, CancellationToken cancellationToken)
    {
        // Without the bitmaps auto-clear bit the directory is stale: a program unaware of bitmaps wrote the image.
        if (header.Bitmaps is not { } extension || (header.Header.Autoclear & AutoclearFeatures.Bitmaps) == 0)
        {
            return [];
        }

        if ((extension.DirectoryOffset & (header.Header.ClusterSize - 1)) != 0 || extension.DirectoryOffset + extension.DirectorySize > storage.Length)
        {
            throw Qcow2Corruption.Create("bitmap directory", $"{extension.DirectorySize} bytes at 0x{extension.DirectoryOffset:x} are unaligned or past the end of the file", extension.DirectoryOffset);
        }

        var directory = new byte[extension.DirectorySize];
        await storage.ReadStructureAsync(extension.DirectoryOffset, directory, "bitmap directory", async, cancellationToken).ConfigureAwait(false);
        return BitmapDirectoryEntry.ParseDirectory(directory, extension.BitmapCount, extension.DirectoryOffset);
    }

    private static IStorage OpenDataFile(HeaderCluster header, string? imagePath, Qcow2OpenOptions options)
    {
        IStorage storage;
        if (options.DataFilePath is { } overridePath)
        {
            // Named by the caller, not by the image: the backing file policy does not apply.
            storage = options.BackingResolver.Open(new FileReference(FilePaths.Absolute(overridePath), FileReferenceKind.ExternalDataFile, imagePath, options.Writable));
        }
        else
        {
            var name = header.ExternalDataFileName
                ?? throw Qcow2Corruption.Create("header", "the external data file bit is set but no data file is named; pass Qcow2OpenOptions.DataFilePath", Qcow2Header.IncompatibleFeaturesOffset);
            storage = OpenImplicitFile(new FileReference(name, FileReferenceKind.ExternalDataFile, imagePath, options.Writable), options);
        }

        try
        {
            var request = FileLockRequest.DataFile(options.Writable);
            storage.Lock(options.ForceShare ? request.Shared() : request, options.Locking);
            return storage;
        }
        catch
        {
            storage.Dispose();
            throw;
        }
    }

    /// <summary>
    /// What a backing file is opened with: read-only, its own data files, never this image's
    /// allocator or extensions; resolver, policy, locking and force-share are inherited as QEMU
    /// passes force-share down the chain.
    /// </summary>
    private static Qcow2OpenOptions InheritedOptions(Qcow2OpenOptions options) =>
        options with { Writable = false, Allocator = null, Extensions = [], DataFilePath = null, LeaveOpen = false, ForRepair = false };

    /// <summary>Opens a file the image names, as far as its backing file policy allows.</summary>
    internal static IStorage OpenImplicitFile(FileReference reference, Qcow2OpenOptions options)
    {
        var policy = options.BackingPolicy;
        reference = reference with { AllowNonRegularFile = policy.AllowNonRegularFiles };
        var authorized = DefaultBackingFileResolver.TryResolvePath(reference.Name, reference.ReferrerPath);
        policy.Authorize(reference, authorized);
        var storage = options.BackingResolver.Open(reference);
        try
        {
            policy.AuthorizeOpened(reference, storage, authorized);
            return storage;
        }
        catch
        {
            storage.Dispose();
            throw;
        }
    }

    private static async ValueTask<IGuestDisk> OpenBackingAsync(string name, string? format, string? imagePath, Qcow2OpenOptions options, ChainContext chain, bool async, CancellationToken cancellationToken)
    {
        var storage = OpenImplicitFile(new FileReference(name, FileReferenceKind.BackingFile, imagePath, Writable: false), options);
        try
        {
            chain.CheckCanEnter(storage, name);
            format ??= await ProbeFormatAsync(storage, async, cancellationToken).ConfigureAwait(false);
            switch (format)
            {
                case "qcow2":
                    return await OpenCoreAsync(storage, InheritedOptions(options), ownsStorage: true, chain, async, cancellationToken).ConfigureAwait(false);
                case "raw":
                    storage.Lock(FileLockRequest.RawFile(writable: false), options.Locking);
                    chain.Enter(storage);
                    return new RawDisk(storage, name);
                default:
                    throw new NotSupportedException($"The backing file '{name}' has format '{format}'; only qcow2 and raw backing files are supported.");
            }
        }
        catch
        {
            storage.Dispose();
            throw;
        }
    }

    internal static async ValueTask<string> ProbeFormatAsync(IStorage storage, bool async, CancellationToken cancellationToken)
    {
        var magic = new byte[4];
        var read = await storage.ReadAsync(0, magic, async, cancellationToken).ConfigureAwait(false);
        return read == 4 && BinaryPrimitives.ReadUInt32BigEndian(magic) == Qcow2Layout.Magic ? "qcow2" : "raw";
    }
}

/// <summary>
/// The files already opened along a backing chain, by identity (device and inode) where the
/// system tells it, so that a loop through a symbolic or hard link is found like a plain one.
/// </summary>
internal sealed class ChainContext
{
    /// <summary>
    /// Most backing files below one image. QEMU sets no limit (it opens 800-deep chains), but a
    /// hostile chain must end in a clear error, not in running out of file descriptors.
    /// </summary>
    public const int MaxDepth = 1024;

    private readonly List<(string Name, FileIdentity? Identity)> _files = [];

    public void Enter(IStorage storage) => _files.Add((storage.Path ?? "(stream)", (storage as FileStorage)?.Identity));

    /// <summary>Refuses a file that is already in the chain, or a chain grown past <see cref="MaxDepth"/>.</summary>
    public void CheckCanEnter(IStorage storage, string name)
    {
        var key = (storage.Path ?? name, (storage as FileStorage)?.Identity);
        if (_files.Any(f => key.Item2 is { } identity ? f.Identity == identity : string.Equals(f.Name, key.Item1, StringComparison.Ordinal)))
        {
            throw Qcow2Corruption.Create("backing chain", $"loop: {Describe()} -> {key.Item1}");
        }

        if (_files.Count > MaxDepth)
        {
            throw new NotSupportedException($"The backing chain of {_files[0].Name} is deeper than {MaxDepth} backing files.");
        }

        EnsureStack();
    }

    /// <summary>
    /// Opening, reading and mapping recurse once per layer of the chain. A thread without stack
    /// for one more layer gets a clear error instead of a stack overflow, which no caller could catch.
    /// </summary>
    /// <exception cref="NotSupportedException">Too little stack is left.</exception>
    public static void EnsureStack()
    {
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
        {
            throw new NotSupportedException("The backing chain is too deep for this thread's stack; use a thread with a larger stack.");
        }
    }

    public string Describe() => string.Join(" -> ", _files.Select(f => f.Name));
}
