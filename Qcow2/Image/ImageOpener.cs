using System.Buffers.Binary;
using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// Opening an image (qcow2_do_open): header checks, the tables read at open, the data file and
/// backing chain, and the read-write preparation.
/// </summary>
internal static class ImageOpener
{
    /// <summary>Opens an image from its storage. With <paramref name="deferExtensions"/>, Create opens the extensions itself once the disk has its size.</summary>
    public static async ValueTask<Qcow2Image> OpenAsync(IStorage storage, Qcow2OpenOptions options, bool ownsStorage, ChainContext chain, bool async, CancellationToken cancellationToken, bool deferExtensions = false)
    {
        ImageSession? session = null;
        try
        {
            options.Validate();
            storage.Lock(options.ImageLock, options.Locking); // before the first byte is read, as QEMU
            chain.Enter(storage);
            var header = await ReadHeaderClusterAsync(storage, async, cancellationToken).ConfigureAwait(false);
            HeaderValidator.ValidateLayout(header);
            HeaderValidator.ValidateIncompatibleFeatures(header);
            CheckOpenable(header, storage, options);

            session = new ImageSession(storage, header, options, ownsStorage);
            var metadata = session.Metadata;
            metadata.ActiveL1 = await L1Table.ReadAsync(storage, header.Header.L1TableOffset, header.Header.L1Size, "active L1 table", async, cancellationToken, metadata.ReadsTablesPastEndAsZeros).ConfigureAwait(false);
            metadata.Snapshots = await ReadSnapshotTableAsync(storage, header.Header, async, cancellationToken).ConfigureAwait(false);
            metadata.Bitmaps = await ReadBitmapDirectoryAsync(storage, header, async, cancellationToken).ConfigureAwait(false);
            if (header.Header.HasExternalDataFile)
            {
                session.GuestDataFile = OpenDataFile(header, storage.Path, options);
            }

            if (header.BackingFileName is { } backingName && options.BackingFiles == BackingFileMode.Open)
            {
                session.Backing = await OpenBackingAsync(backingName, header.BackingFormat, storage.Path, options, chain, async, cancellationToken).ConfigureAwait(false);
            }

            var image = new Qcow2Image(session);
            if (options.Writable)
            {
                await PrepareForWritingAsync(image, session, deferExtensions, async, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                using (await metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
                {
                    image.OpenExtensions();
                }
            }

            return image;
        }
        catch
        {
            if (session is not null)
            {
                session.Dispose();
            }
            else if (ownsStorage)
            {
                storage.Dispose();
            }

            throw;
        }
    }

    /// <summary>
    /// Read-write open, as QEMU does it: clear auto-clear bits no loaded code maintains, load the
    /// persistent bitmaps and mark them in use (this session tracks writes in them and stores them
    /// at close), create the writable state,
    /// repair a dirty image, and arm the dirty bit for the first change.
    /// </summary>
    private static async ValueTask PrepareForWritingAsync(Qcow2Image image, ImageSession session, bool deferExtensions, bool async, CancellationToken cancellationToken)
    {
        var metadata = session.Metadata;
        using var locked = await metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var header = metadata.Header;
        var maintained = AutoclearFeatures.RawExternalData | AutoclearFeatures.Bitmaps;
        foreach (var extension in session.Extensions)
        {
            maintained |= (AutoclearFeatures)(1UL << extension.AutoclearBit);
        }

        if ((header.Header.Autoclear & ~maintained) != 0)
        {
            await metadata.RewriteHeaderAsync(header with { Header = header.Header with { Autoclear = header.Header.Autoclear & maintained } }, async, cancellationToken).ConfigureAwait(false);
        }

        var table = await metadata.GetRefcountsLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var writes = new WriteSession(session, new WritableState(session, table), image.Reader);
        var state = writes.State;
        if (!session.Options.ForRepair)
        {
            // Loaded before they are marked in use; a repair writes no guest data, so its bitmaps stay as they are.
            session.Bitmaps = await PersistentBitmaps.LoadAsync(metadata, async, cancellationToken).ConfigureAwait(false);
            await state.Metadata.MarkBitmapsInUseAsync(async, cancellationToken).ConfigureAwait(false);
        }

        image.AttachWrites(writes);
        if (!deferExtensions)
        {
            image.OpenExtensionsAndAllocator();
        }

        var dirty = (metadata.Header.Header.Incompatible & IncompatibleFeatures.Dirty) != 0;
        if (dirty && session.Options.ForRepair)
        {
            state.Metadata.KeepDirtyBit = true; // until a repair leaves the image clean; Check reports what is wrong
        }
        else if (dirty)
        {
            var result = await writes.Checker.CheckLockedAsync(CheckRepair.All, salvage: false, async, cancellationToken).ConfigureAwait(false);
            if (result.Failure is not null || result.CheckErrors > 0 || result.Corruptions > 0)
            {
                throw Qcow2Corruption.Create("header", $"could not repair the dirty image ({result.CheckErrors} check errors, {result.Corruptions} corruptions remain{(result.Failure is null ? string.Empty : ", check failed: " + result.Failure)}): {string.Join("; ", result.Messages.Take(5))}");
            }
        }

        state.Metadata.ArmDirtyBit();
    }

    /// <summary>Reads and decodes cluster 0.</summary>
    public static async ValueTask<HeaderCluster> ReadHeaderClusterAsync(IStorage storage, bool async, CancellationToken cancellationToken)
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
    public static NotSupportedException EncryptionUnsupported(EncryptionMethod method) =>
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
    public static Qcow2OpenOptions InheritedOptions(Qcow2OpenOptions options) =>
        options with { Writable = false, Allocator = null, Extensions = [], DataFilePath = null, LeaveOpen = false, ForRepair = false };

    /// <summary>Opens a file the image names, as far as its backing file policy allows.</summary>
    public static IStorage OpenImplicitFile(FileReference reference, Qcow2OpenOptions options)
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

    public static async ValueTask<IGuestDisk> OpenBackingAsync(string name, string? format, string? imagePath, Qcow2OpenOptions options, ChainContext chain, bool async, CancellationToken cancellationToken)
    {
        var storage = OpenImplicitFile(new FileReference(name, FileReferenceKind.BackingFile, imagePath, Writable: false), options);
        try
        {
            chain.CheckCanEnter(storage, name);
            format ??= await ProbeFormatAsync(storage, async, cancellationToken).ConfigureAwait(false);
            switch (format)
            {
                case "qcow2":
                    return await OpenAsync(storage, InheritedOptions(options), ownsStorage: true, chain, async, cancellationToken).ConfigureAwait(false);
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

    public static async ValueTask<string> ProbeFormatAsync(IStorage storage, bool async, CancellationToken cancellationToken)
    {
        var magic = new byte[4];
        var read = await storage.ReadAsync(0, magic, async, cancellationToken).ConfigureAwait(false);
        return read == 4 && BinaryPrimitives.ReadUInt32BigEndian(magic) == Qcow2Layout.Magic ? "qcow2" : "raw";
    }
}
