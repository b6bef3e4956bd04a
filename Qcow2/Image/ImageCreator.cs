using System.Numerics;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>qemu-img create: option checks, the empty image, its size and preallocation, opened for writing.</summary>
internal static class ImageCreator
{
    /// <summary>
    /// QEMU refuses an image that would be its own backing file; a data file must not be the image
    /// either, nor the backing file, which creating the data file would empty (qemu-img does that).
    /// </summary>
    public static void RefuseSelfReference(Qcow2CreateOptions options, string fullPath)
    {
        var backing = options.BackingFile is { } backingName ? DefaultBackingFileResolver.ResolvePath(backingName, fullPath) : null;
        if (backing is not null && FileStorage.IsSameFile(backing, fullPath))
        {
            throw new ArgumentException($"Trying to create an image with the same filename as the backing file ({fullPath})", nameof(options));
        }

        var dataFile = options.DataFile is { } dataName ? DefaultBackingFileResolver.ResolvePath(dataName, fullPath) : null;
        if (dataFile is not null && FileStorage.IsSameFile(dataFile, fullPath))
        {
            throw new ArgumentException($"The data file and the image are the same file ({fullPath})", nameof(options));
        }

        if (dataFile is not null && backing is not null && (FileStorage.IsSameFile(dataFile, backing) || (File.Exists(dataFile) && IsInBackingChain(dataFile, backing, options))))
        {
            throw new ArgumentException($"The data file {dataFile} is the backing file or a file of its chain; creating the data file would empty it", nameof(options));
        }

        if (backing is not null && File.Exists(fullPath) && IsInBackingChain(fullPath, backing, options))
        {
            throw new ArgumentException($"Trying to create an image over a file of its own backing chain ({fullPath})", nameof(options));
        }
    }

    /// <summary>
    /// Whether <paramref name="fullPath"/> is a file below <paramref name="backing"/> in its chain:
    /// creating it would empty a layer the new image is to read through (and the open after it
    /// would find a loop). Headers only, force-shared; a chain that cannot be read says no.
    /// </summary>
    private static bool IsInBackingChain(string fullPath, string backing, Qcow2CreateOptions options)
    {
        var openOptions = (options.OpenOptions ?? new Qcow2OpenOptions()) with { Writable = false, ForceShare = true, BackingResolver = options.BackingResolver };
        try
        {
            return BackingChainReader.Read(backing, openOptions).Any(link => link.Path is { } layer && File.Exists(layer) && FileStorage.IsSameFile(layer, fullPath));
        }
        catch (Exception error) when (error is IOException or InvalidDataException or NotSupportedException or UnauthorizedAccessException or ArgumentException)
        {
            return false; // not a qcow2 image, or unreadable: then it has no chain to protect
        }
    }

    /// <summary>
    /// Create over <paramref name="storage"/> with the size and backing format already resolved and
    /// validated; <paramref name="checkedPath"/> is its file when Create(string) already refused self references.
    /// </summary>
    public static Qcow2Image Create(IStorage storage, Qcow2CreateOptions options, bool leaveOpen, string? checkedPath, (long Size, string? BackingFormat) resolved)
    {
        var (size, backingFormat) = resolved;
        var locking = (options.OpenOptions ?? new Qcow2OpenOptions()).Locking;
        try
        {
            if (storage.Path is { } path && checkedPath is null)
            {
                RefuseSelfReference(options, FilePaths.Absolute(path));
            }

            // Locked before it is emptied, as Create(string) does: a FileStream over a file a VM
            // is running must be refused untouched, not truncated and then refused.
            storage.Lock(FileLockRequest.Image(writable: true), locking);
            storage.SetLength(0);
            if (options.DataFile is { } dataFile)
            {
                using var data = FileStorage.Create(DefaultBackingFileResolver.ResolvePath(dataFile, storage.Path), new FileStorageOptions { Writable = true, Locking = locking });
                if (options.DataFileRaw || options.Preallocation != Preallocation.Off)
                {
                    data.SetLength(size);
                }
            }

            WriteEmptyImage(storage, options, backingFormat);
        }
        catch
        {
            if (!leaveOpen)
            {
                storage.Dispose();
            }

            throw;
        }

        var openOptions = options.OpenOptions ?? new Qcow2OpenOptions();
        var image = SyncOver.Run(ImageOpener.OpenAsync(storage, openOptions with { Writable = true }, ownsStorage: !leaveOpen, new ChainContext(), async: false, CancellationToken.None, deferExtensions: true));
        try
        {
            SyncOver.Run(image.ResizeCoreAsync(size, allowShrink: false, async: false, CancellationToken.None, zeroNewBytes: false)); // new bytes show the backing file
            var preallocation = options.DataFileRaw && options.Preallocation == Preallocation.Off ? Preallocation.Metadata : options.Preallocation;
            if (preallocation != Preallocation.Off)
            {
                SyncOver.Run(image.PreallocateCoreAsync(preallocation, async: false, CancellationToken.None));
            }

            // Extensions see the image as created: its final size, preallocated clusters in place.
            image.RunLocked(() =>
            {
                image.OpenExtensionsAndAllocator();
                return true;
            });

            image.Flush();
            return image;
        }
        catch
        {
            image.Dispose();
            throw;
        }
    }

    public static (long Size, string? BackingFormat) ResolveSize(Qcow2CreateOptions options, string? path)
    {
        if (options.BackingFile is not { } backing)
        {
            return (options.Size ?? throw new ArgumentException("A size is needed when there is no backing file.", nameof(options)), options.BackingFormat);
        }

        if (options.Size is long given && options.BackingFormat is { } format)
        {
            return (given, format);
        }

        var openOptions = (options.OpenOptions ?? new Qcow2OpenOptions()) with { BackingResolver = options.BackingResolver };
        using var storage = ImageOpener.OpenImplicitFile(new FileReference(backing, FileReferenceKind.BackingFile, path, Writable: false), openOptions);
        var probed = options.BackingFormat ?? SyncOver.Run(ImageOpener.ProbeFormatAsync(storage, async: false, CancellationToken.None));
        if (options.Size is long size)
        {
            return (size, probed);
        }

        if (probed == "raw")
        {
            return (storage.Length, probed);
        }

        var header = SyncOver.Run(ImageOpener.ReadHeaderClusterAsync(storage, async: false, CancellationToken.None));
        return (header.Header.Size, probed);
    }

    public static void Validate(Qcow2CreateOptions options, long size)
    {
        static ArgumentException Bad(string message) => new(message, nameof(options));
        if (options.Version is not (2 or 3))
        {
            throw Bad($"qcow2 version {options.Version} does not exist; use 2 (compat=0.10) or 3 (compat=1.1).");
        }

        if (!BitOperations.IsPow2(options.ClusterSize) || options.ClusterSize < Qcow2Layout.ClusterSize(Qcow2Layout.MinClusterBits) || options.ClusterSize > Qcow2Layout.ClusterSize(Qcow2Layout.MaxClusterBits))
        {
            throw Bad($"Cluster size {options.ClusterSize} must be a power of two between 512 and 2097152 bytes.");
        }

        if (!BitOperations.IsPow2(options.RefcountBits) || options.RefcountBits > 64)
        {
            throw Bad($"Refcount width {options.RefcountBits} must be a power of two up to 64 bits.");
        }

        if (size < 0 || size % Qcow2Layout.SectorSize != 0)
        {
            throw Bad($"The size {size} must be a non-negative multiple of 512 bytes.");
        }

        if (options.Version == 2 && (options.RefcountBits != 16 || options.LazyRefcounts || options.ExtendedL2 || options.CompressionType != CompressionType.Deflate || options.DataFile is not null))
        {
            throw Bad("compat=0.10 images support only 16-bit refcounts and none of lazy_refcounts, extended_l2, zstd compression or data files.");
        }

        if (options.ExtendedL2 && options.ClusterSize < 1 << Qcow2Layout.MinExtendedL2ClusterBits)
        {
            throw Bad("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes.");
        }

        if (options.DataFileRaw && options.DataFile is null)
        {
            throw Bad("data_file_raw needs a data_file.");
        }

        if (options.DataFileRaw && options.BackingFile is not null)
        {
            throw Bad("Backing file and data_file_raw cannot be used at the same time.");
        }

        if (options.BackingFile is not null && options.Preallocation != Preallocation.Off && !options.ExtendedL2)
        {
            throw Bad("Backing file and preallocation can only be used at the same time if extended_l2 is on.");
        }

        if (Qcow2Header.RequiredL1Entries(size, BitOperations.Log2((uint)options.ClusterSize), options.ExtendedL2) > Qcow2Layout.MaxL1TableBytes / Qcow2Layout.L1EntrySize)
        {
            throw Bad($"{size} bytes need an L1 table larger than QEMU's 32 MiB limit.");
        }
    }

    /// <summary>The header of a new empty image, written with its first refcount structures.</summary>
    private static void WriteEmptyImage(IStorage storage, Qcow2CreateOptions options, string? backingFormat)
    {
        var clusterBits = BitOperations.Log2((uint)options.ClusterSize);
        var clusterSize = options.ClusterSize;
        var incompatible = IncompatibleFeatures.None;
        if (options.CompressionType != CompressionType.Deflate)
        {
            incompatible |= IncompatibleFeatures.CompressionType;
        }

        if (options.ExtendedL2)
        {
            incompatible |= IncompatibleFeatures.ExtendedL2;
        }

        if (options.DataFile is not null)
        {
            incompatible |= IncompatibleFeatures.ExternalDataFile;
        }

        var header = new HeaderCluster
        {
            Header = new Qcow2Header
            {
                Version = options.Version,
                ClusterBits = clusterBits,
                Size = 0,
                RefcountTableOffset = clusterSize,
                RefcountTableClusters = 1,
                RefcountOrder = BitOperations.Log2((uint)options.RefcountBits),
                HeaderLength = options.Version == 2 ? Qcow2Layout.V2HeaderLength : Qcow2Layout.V3HeaderLength,
                Incompatible = incompatible,
                Compatible = options.LazyRefcounts ? CompatibleFeatures.LazyRefcounts : CompatibleFeatures.None,
                Autoclear = options.DataFileRaw ? AutoclearFeatures.RawExternalData : AutoclearFeatures.None,
                CompressionType = options.CompressionType,
            },
            BackingFileName = options.BackingFile,
            BackingFormat = options.BackingFile is null ? null : backingFormat,
            ExternalDataFileName = options.DataFile,
            FeatureNames = options.Version >= 3 ? FeatureName.Standard : [],
        };
        EmptyImageWriter.Write(storage, header, BitOperations.Log2((uint)options.RefcountBits));
    }
}
