using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>What <see cref="Qcow2Image.Amend"/> changes (qemu-img amend -o); null leaves a property as it is.</summary>
public sealed record Qcow2AmendOptions
{
    /// <summary>Format version: 2 (compat=0.10) or 3 (compat=1.1).</summary>
    public int? Version { get; init; }

    /// <summary>Refcount entry width: a power of two from 1 to 64.</summary>
    public int? RefcountBits { get; init; }

    /// <summary>Postpone refcount updates (v3 only).</summary>
    public bool? LazyRefcounts { get; init; }

    /// <summary>New virtual size (growing; shrinking needs <see cref="AllowShrink"/>).</summary>
    public long? Size { get; init; }

    /// <summary>Allow <see cref="Size"/> to shrink the disk.</summary>
    public bool AllowShrink { get; init; }
}

public sealed partial class Qcow2Image
{
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
            var header = image._core.Header.Header;
            var targetVersion = options.Version ?? header.Version;
            var targetBits = options.RefcountBits ?? (1 << header.RefcountOrder);
            var targetLazy = options.LazyRefcounts ?? (header.Compatible & CompatibleFeatures.LazyRefcounts) != 0;
            if (targetVersion < 3 && targetBits != 16)
            {
                throw new NotSupportedException("compat=0.10 requires refcount_bits=16");
            }

            if (targetVersion < 3 && targetLazy && options.LazyRefcounts == true)
            {
                throw new NotSupportedException("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
            }

            if (targetVersion < 3 && (header.Incompatible & ~IncompatibleFeatures.Dirty) != 0)
            {
                throw new NotSupportedException($"Cannot downgrade an image with incompatible features 0x{(ulong)(header.Incompatible & ~IncompatibleFeatures.Dirty):x} set");
            }

            if (targetVersion < 3 && image._core.Bitmaps.Count > 0)
            {
                throw new NotSupportedException("Cannot downgrade an image with persistent bitmaps (v2 has no bitmaps extension).");
            }

            if (header.Version < 3 && targetVersion >= 3)
            {
                image.RunLocked(() =>
                {
                    SyncOver.Run(image.UpgradeToV3LockedAsync(async: false, CancellationToken.None));
                    return true;
                });
            }

            if (options.Size is long size && size != image.Size)
            {
                image.Resize(size, options.AllowShrink);
            }
        }

        var currentBits = 0;
        using (var image = Open())
        {
            currentBits = 1 << image._core.Header.Header.RefcountOrder;
            if (options.RefcountBits is { } width && width != currentBits)
            {
                image.RunLocked(() =>
                {
                    SyncOver.Run(image.ChangeRefcountWidthLockedAsync(width, async: false, CancellationToken.None));
                    return true;
                });
            }
        }

        if (options.RefcountBits is { } newBits && newBits != currentBits)
        {
            using var image = Open();
            image.Check(CheckRepair.Leaks); // the old structure is referenced by nothing now: free it
        }

        using (var image = Open())
        {
            var header = image._core.Header.Header;
            var lazy = (header.Compatible & CompatibleFeatures.LazyRefcounts) != 0;
            if (options.LazyRefcounts is { } wantLazy && wantLazy != lazy && header.Version >= 3)
            {
                image.RunLocked(() =>
                {
                    SyncOver.Run(image.SetLazyRefcountsLockedAsync(wantLazy, async: false, CancellationToken.None));
                    return true;
                });
            }

            if (options.Version == 2 && header.Version >= 3)
            {
                image.RunLocked(() =>
                {
                    SyncOver.Run(image.DowngradeToV2LockedAsync(async: false, CancellationToken.None));
                    return true;
                });
            }
        }
    }

    private async ValueTask UpgradeToV3LockedAsync(bool async, CancellationToken cancellationToken)
    {
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _core.Header;
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
        await _core.RewriteHeaderAsync(header with { Header = upgraded }, async, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask SetLazyRefcountsLockedAsync(bool enabled, bool async, CancellationToken cancellationToken)
    {
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _core.Header;
        var compatible = enabled
            ? header.Header.Compatible | CompatibleFeatures.LazyRefcounts
            : header.Header.Compatible & ~CompatibleFeatures.LazyRefcounts;
        await _core.RewriteHeaderAsync(header with { Header = header.Header with { Compatible = compatible } }, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Rebuilds the refcount structure with another entry width from the references the checker
    /// counts, then switches the header to it with one write. The old structure is left leaked.
    /// </summary>
    private async ValueTask ChangeRefcountWidthLockedAsync(int bits, bool async, CancellationToken cancellationToken)
    {
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var before = await CheckLockedAsync(CheckRepair.None, async, cancellationToken).ConfigureAwait(false);
        if (before.CheckErrors > 0 || before.Corruptions > 0)
        {
            throw new InvalidOperationException($"The image has {before.Corruptions} corruptions and {before.CheckErrors} check errors; repair it (qemu-img check -r all) before changing the refcount width.");
        }

        var report = new CheckReport();
        var counter = new ReferenceCounter(_core, report, new CorruptionSignal(_core, report));
        await counter.CalculateAsync(_core.RefcountManager!.Table, fixErrors: false, async, cancellationToken).ConfigureAwait(false);
        var references = counter.References.ToArray().Select(r => (ulong)r).ToArray();
        var order = System.Numerics.BitOperations.Log2((uint)bits);
        var areaStart = Math.Max(Math.Max(references.Length, _core.Geometry.ClustersFor(_core.RefreshFileLength())), _core.Reservations.HighestEnd());
        var placement = await RefcountStructureBuilder.WriteAsync(_core.File, _core.Geometry.ClusterBits, order, references, areaStart, async, cancellationToken).ConfigureAwait(false);
        _core.NoteFileEnd(placement.EndCluster << _core.Geometry.ClusterBits);
        var header = _core.Header;
        var switched = header.Header with { RefcountOrder = order, RefcountTableOffset = placement.TableOffset, RefcountTableClusters = placement.TableClusters };
        await _core.RewriteHeaderAsync(header with { Header = switched }, async, cancellationToken).ConfigureAwait(false);
        _core.RefcountCache.Clear(); // this instance still has the old width in its geometry: the caller only disposes it
    }

    /// <summary>
    /// qcow2_downgrade: marks the image clean, turns every zero cluster (active and in snapshots)
    /// into what v2 can express — nothing without a backing file, else zero-filled data — and
    /// rewrites the header as version 2 without v3's fields and feature bits.
    /// </summary>
    private async ValueTask DowngradeToV2LockedAsync(bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var refcounts = _core.RefcountManager!;
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var zeros = new byte[geometry.ClusterSize];
        var visited = new HashSet<long>();
        var hasBacking = _core.Header.BackingFileName is not null;
        var l1Tables = new List<ulong[]> { _core.ActiveL1.ToArray() };
        foreach (var snapshot in _core.Snapshots)
        {
            l1Tables.Add(await ReadSnapshotL1Async(snapshot, async, cancellationToken).ConfigureAwait(false));
        }

        await _core.Tables!.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
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
                using var table = await _core.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
                for (var index = 0; index < geometry.L2Entries; index++)
                {
                    var entry = L2Table.ReadEntry(table.Span, index, geometry.ExtendedL2);
                    var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
                    L2Entry replacement;
                    var hostRefcount = type == ClusterType.ZeroAllocated
                        ? (long)await refcounts.GetAsync(entry.HostOffset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false)
                        : 0;
                    // Only this entry reaches the host cluster (and, in a table of its own, says so with COPIED):
                    // it stays, its bytes become the zeros the guest saw. Otherwise zeros go to a fresh cluster.
                    if (type == ClusterType.ZeroAllocated && hostRefcount == sharers && (sharers > 1 || entry.IsCopied))
                    {
                        await WriteDataAsync(entry.HostOffset, zeros, async, cancellationToken).ConfigureAwait(false);
                        replacement = L2Entry.Normal(entry.HostOffset, copied: entry.IsCopied);
                    }
                    else if (type == ClusterType.ZeroPlain && !hasBacking)
                    {
                        replacement = L2Entry.Unallocated;
                    }
                    else if (type is ClusterType.ZeroPlain or ClusterType.ZeroAllocated)
                    {
                        // Zeros in a cluster of their own (the old host, if any, holds other entries' data).
                        var host = await refcounts.AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);
                        if (sharers > 1)
                        {
                            await refcounts.ChangeAsync(host >> geometry.ClusterBits, sharers - 1, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                        }

                        await WriteDataAsync(host, zeros, async, cancellationToken).ConfigureAwait(false);
                        replacement = L2Entry.Normal(host, copied: sharers == 1);
                        if (type == ClusterType.ZeroAllocated)
                        {
                            await refcounts.ChangeAsync(entry.HostOffset >> geometry.ClusterBits, -sharers, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                        }
                    }
                    else
                    {
                        continue;
                    }

                    L2Table.WriteEntry(table.Span, index, geometry.ExtendedL2, replacement);
                    TableCache.MarkDirty(table);
                }
            }
        }

        _core.L2Cache.FlushStorageBeforeWrite = true; // the zeros before the entries exposing them
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _core.Header;
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
        await _core.RewriteHeaderAsync(header with { Header = v2, FeatureNames = [] }, async, cancellationToken).ConfigureAwait(false);
        _core.RefcountManager!.BeforeFirstChange = null;
    }
}
