using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// qemu-img amend: version upgrade and downgrade, refcount width, lazy refcounts and size, each
/// step in a read-write open of its own (QEMU's qcow2_amend_options order).
/// </summary>
internal sealed class Amender(ImageSession session, WritableState writable, GuestWriter writer, ImageChecker checker)
{
    private readonly ImageMetadata _metadata = session.Metadata;
    private readonly WritableState _writable = writable;
    private readonly GuestWriter _writer = writer;
    private readonly ImageChecker _checker = checker;

    public static void Amend(string path, Qcow2AmendOptions options, Func<Qcow2OpenOptions>? openOptions = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Version is not (null or 2 or 3))
        {
            throw new ArgumentException($"Version {options.Version} is not a qcow2 version (use 2 or 3).", nameof(options));
        }

        if (options.RefcountBits is { } bits && (bits is < 1 or > 64 || (bits & (bits - 1)) != 0))
        {
            throw new ArgumentException("Refcount width must be a power of two and may not exceed 64 bits", nameof(options));
        }

        Qcow2Image Open() => Qcow2Image.Open(path, (openOptions?.Invoke() ?? new Qcow2OpenOptions()) with { Writable = true, BackingFiles = BackingFileMode.Ignore });
        using (var image = Open())
        {
            var header = image.Header.Header;
            var targetVersion = options.Version ?? header.Version;
            RefuseWhatTheTargetCannotExpress(options, header, targetVersion);
            if (targetVersion < 3)
            {
                // v2 has no bitmaps extension: the bitmaps go, and their clusters with them (qemu-img
                // leaves those leaked and the stale extension warning at every open).
                foreach (var bitmap in image.PersistentBitmaps)
                {
                    image.RemoveBitmap(bitmap.Name);
                }
            }

            if (header.Version < 3 && targetVersion >= 3)
            {
                RunLocked(image, (amender, async, cancellationToken) => amender.UpgradeToV3Async(async, cancellationToken));
            }

            if (options.Size is long size && size != image.Size)
            {
                image.Resize(size, options.AllowShrink);
            }

            if (options.DataFile is not null || options.DataFileRaw is not null)
            {
                RunLocked(image, (amender, async, cancellationToken) => amender.SetDataFileAsync(options.DataFile, options.DataFileRaw, async, cancellationToken));
            }
        }

        var currentBits = 0;
        using (var image = Open())
        {
            currentBits = 1 << image.Header.Header.RefcountOrder;
            if (options.RefcountBits is { } width && width != currentBits)
            {
                RunLocked(image, (amender, async, cancellationToken) => amender.ChangeRefcountWidthAsync(width, async, cancellationToken));
            }
        }

        if (options.RefcountBits is { } newBits && newBits != currentBits)
        {
            using var image = Open();
            image.Check(CheckRepair.Leaks); // the old structure is referenced by nothing now: free it
        }

        using (var image = Open())
        {
            var header = image.Header.Header;
            var lazy = (header.Compatible & CompatibleFeatures.LazyRefcounts) != 0;
            if (options.LazyRefcounts is { } wantLazy && wantLazy != lazy && header.Version >= 3)
            {
                RunLocked(image, (amender, async, cancellationToken) => amender.SetLazyRefcountsAsync(wantLazy, async, cancellationToken));
            }

            if (options.Version == 2 && header.Version >= 3)
            {
                RunLocked(image, (amender, async, cancellationToken) => amender.DowngradeToV2Async(async, cancellationToken));
            }
        }
    }

    /// <summary>What version 2 cannot hold, refused before anything changes (qcow2_amend_options' checks).</summary>
    private static void RefuseWhatTheTargetCannotExpress(Qcow2AmendOptions options, Qcow2Header header, int targetVersion)
    {
        var targetBits = options.RefcountBits ?? (1 << header.RefcountOrder);
        var targetLazy = options.LazyRefcounts ?? (header.Compatible & CompatibleFeatures.LazyRefcounts) != 0;
        if (targetVersion < 3 && targetBits != 16)
        {
            throw new NotSupportedException("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
        }

        if (targetVersion < 3 && targetLazy && options.LazyRefcounts == true)
        {
            throw new NotSupportedException("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        }

        if (targetVersion < 3 && (header.Incompatible & ~IncompatibleFeatures.Dirty) != 0)
        {
            throw new NotSupportedException($"Cannot downgrade an image with incompatible features 0x{(ulong)(header.Incompatible & ~IncompatibleFeatures.Dirty):x} set");
        }
    }

    private static void RunLocked(Qcow2Image image, Func<Amender, bool, CancellationToken, ValueTask> step) =>
        image.RunLocked(() =>
        {
            SyncOver.Run(step(image.CreateAmender(), false, CancellationToken.None));
            return true;
        });

    public async ValueTask UpgradeToV3Async(bool async, CancellationToken cancellationToken)
    {
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _metadata.Header;
        var upgraded = header.Header with
        {
            Version = 3,
            HeaderLength = Qcow2Layout.V3HeaderLength,
            RefcountOrder = 4,
            Incompatible = 0,
            Compatible = 0,
            Autoclear = 0,
            CompressionType = CompressionType.Deflate,
        };
        await _metadata.RewriteHeaderAsync(header with { Header = upgraded }, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Renames the external data file in the header and/or clears its raw bit (qcow2_amend_options' data-file part).</summary>
    public async ValueTask SetDataFileAsync(string? name, bool? raw, bool async, CancellationToken cancellationToken)
    {
        var header = _metadata.Header;
        var isRaw = (header.Header.Autoclear & AutoclearFeatures.RawExternalData) != 0;
        if (name is not null && header.ExternalDataFileName is null)
        {
            throw new InvalidOperationException("data-file can only be set for images that use an external data file");
        }

        if (raw == true && !isRaw)
        {
            throw new InvalidOperationException("data-file-raw cannot be set on existing images");
        }

        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var autoclear = raw == false ? header.Header.Autoclear & ~AutoclearFeatures.RawExternalData : header.Header.Autoclear;
        await _metadata.RewriteHeaderAsync(header with { ExternalDataFileName = name ?? header.ExternalDataFileName, Header = header.Header with { Autoclear = autoclear } }, async, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask SetLazyRefcountsAsync(bool enabled, bool async, CancellationToken cancellationToken)
    {
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _metadata.Header;
        var compatible = enabled
            ? header.Header.Compatible | CompatibleFeatures.LazyRefcounts
            : header.Header.Compatible & ~CompatibleFeatures.LazyRefcounts;
        await _metadata.RewriteHeaderAsync(header with { Header = header.Header with { Compatible = compatible } }, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Rebuilds the refcount structure with another entry width from the references the checker
    /// counts, then switches the header to it with one write. The old structure is left leaked.
    /// </summary>
    public async ValueTask ChangeRefcountWidthAsync(int bits, bool async, CancellationToken cancellationToken)
    {
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var before = await _checker.CheckLockedAsync(CheckRepair.None, salvage: false, async, cancellationToken).ConfigureAwait(false);
        if (before.CheckErrors > 0 || before.Corruptions > 0)
        {
            throw new InvalidOperationException($"The image has {before.Corruptions} corruptions and {before.CheckErrors} check errors; repair it (qemu-img check -r all) before changing the refcount width.");
        }

        var references = await _checker.CountReferencesLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.Metadata.SwitchRefcountWidthAsync(System.Numerics.BitOperations.Log2((uint)bits), references, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// qcow2_downgrade: marks the image clean, turns every zero cluster (active and in snapshots)
    /// into what v2 can express — nothing without a backing file, else zero-filled data — and
    /// rewrites the header as version 2 without v3's fields and feature bits.
    /// </summary>
    public async ValueTask DowngradeToV2Async(bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var refcounts = _writable.Refcounts;
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var zeros = new byte[geometry.ClusterSize];
        var visited = new HashSet<long>();
        var hasBacking = _metadata.Header.BackingFileName is not null;
        var l1Tables = new List<ulong[]> { _metadata.ActiveL1.ToArray() };
        foreach (var snapshot in _metadata.Snapshots)
        {
            l1Tables.Add(await _metadata.ReadSnapshotL1Async(snapshot, async, cancellationToken).ConfigureAwait(false));
        }

        var tables = _writable.Tables;
        await tables.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
        foreach (var l1 in l1Tables)
        {
            foreach (var raw in l1)
            {
                var l2Offset = new L1Entry(raw).L2TableOffset;
                if (l2Offset == 0 || !visited.Add(l2Offset))
                {
                    continue;
                }

                // Every L1 table reaching this L2 table counts once in its clusters' refcounts.
                var sharers = (long)await refcounts.GetAsync(l2Offset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false);
                using var table = await _metadata.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
                for (var index = 0; index < geometry.L2Entries; index++)
                {
                    var entry = L2Table.ReadEntry(table.Span, index, geometry.ExtendedL2);
                    if (await WithoutZeroFlagAsync(entry, sharers, hasBacking, zeros, async, cancellationToken).ConfigureAwait(false) is { } replacement)
                    {
                        tables.SetEntryAt(table, index, replacement);
                    }
                }
            }
        }

        tables.OrderAfterGuestData(); // the zeros before the entries exposing them
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _metadata.Header;
        var v2 = header.Header with
        {
            Version = 2,
            HeaderLength = Qcow2Layout.V2HeaderLength,
            Incompatible = 0,
            Compatible = 0,
            Autoclear = 0,
            RefcountOrder = 4,
            CompressionType = CompressionType.Deflate,
        };
        await _metadata.RewriteHeaderAsync(header with { Header = v2, FeatureNames = [] }, async, cancellationToken).ConfigureAwait(false);
        _writable.Metadata.DisarmDirtyBit();
    }

    /// <summary>
    /// What a v2 image says instead of a zero cluster entry (null: the entry stays): nothing without
    /// a backing file, else zero-filled data, in place when only this entry reaches the host cluster.
    /// </summary>
    private async ValueTask<L2Entry?> WithoutZeroFlagAsync(L2Entry entry, long sharers, bool hasBacking, byte[] zeros, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var refcounts = _writable.Refcounts;
        var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
        var hostRefcount = type == ClusterType.ZeroAllocated
            ? (long)await refcounts.GetAsync(entry.HostOffset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false)
            : 0;

        // Only this entry reaches the host cluster (and, in a table of its own, says so with COPIED):
        // it stays, its bytes become the zeros the guest saw. Otherwise zeros go to a fresh cluster.
        if (type == ClusterType.ZeroAllocated && hostRefcount == sharers && (sharers > 1 || entry.IsCopied))
        {
            await _writer.WriteDataAsync(entry.HostOffset, zeros, async, cancellationToken).ConfigureAwait(false);
            return L2Entry.Normal(entry.HostOffset, copied: entry.IsCopied);
        }

        if (type == ClusterType.ZeroPlain && !hasBacking)
        {
            return L2Entry.Unallocated;
        }

        if (type is not (ClusterType.ZeroPlain or ClusterType.ZeroAllocated))
        {
            return null;
        }

        // Zeros in a cluster of their own (the old host, if any, holds other entries' data).
        var host = await refcounts.AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);
        if (sharers > 1)
        {
            await refcounts.ChangeAsync(host >> geometry.ClusterBits, sharers - 1, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
        }

        await _writer.WriteDataAsync(host, zeros, async, cancellationToken).ConfigureAwait(false);
        if (type == ClusterType.ZeroAllocated)
        {
            await refcounts.ChangeAsync(entry.HostOffset >> geometry.ClusterBits, -sharers, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
        }

        return L2Entry.Normal(host, copied: sharers == 1);
    }
}
