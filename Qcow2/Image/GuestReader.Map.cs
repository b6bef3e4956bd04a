using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

internal sealed partial class GuestReader
{
    /// <summary>Block status of [offset, offset + length) through the chain, appended to <paramref name="output"/> at <paramref name="depth"/>.</summary>
    public async ValueTask MapAsync(long offset, long length, int depth, List<MapEntry> output, bool async, CancellationToken cancellationToken)
    {
        ThrowIfEncrypted();
        var end = offset + length;
        var position = offset;
        var dataFile = _session.GuestDataFile.Path;
        while (position < end)
        {
            var run = await GetRunAsync(position, end - position, async, cancellationToken).ConfigureAwait(false);
            switch (run.Type)
            {
                case SubclusterType.Normal when await IsMetadataPreallocatedAsync(async, cancellationToken).ConfigureAwait(false):
                    AddWithHoles(run, depth, output);
                    break;
                case SubclusterType.Normal:
                    output.Add(new MapEntry(run.GuestOffset, run.Length, depth, Present: true, Zero: false, Data: true, run.HostOffset, dataFile));
                    break;
                case SubclusterType.Compressed:
                    output.Add(new MapEntry(run.GuestOffset, run.Length, depth, Present: true, Zero: false, Data: true, null, dataFile));
                    break;
                case SubclusterType.ZeroPlain:
                    output.Add(new MapEntry(run.GuestOffset, run.Length, depth, Present: true, Zero: true, Data: false, null, dataFile));
                    break;
                case SubclusterType.ZeroAllocated:
                    output.Add(new MapEntry(run.GuestOffset, run.Length, depth, Present: true, Zero: true, Data: false, run.HostOffset, dataFile));
                    break;
                default:
                    await MapUnallocatedAsync(run, depth, output, async, cancellationToken).ConfigureAwait(false);
                    break;
            }

            position = run.End;
        }
    }

    private async ValueTask MapUnallocatedAsync(MappingRun run, int depth, List<MapEntry> output, bool async, CancellationToken cancellationToken)
    {
        long? offset = run.Type == SubclusterType.UnallocatedAllocated ? run.HostOffset : null;
        if (_session.Backing is not { } backing)
        {
            output.Add(new MapEntry(run.GuestOffset, run.Length, depth, Present: false, Zero: true, Data: false, offset, _session.GuestDataFile.Path));
            return;
        }

        var inBacking = Math.Clamp(backing.Size - run.GuestOffset, 0, run.Length);
        if (inBacking > 0)
        {
            ChainContext.EnsureStack();
            await backing.MapAsync(run.GuestOffset, inBacking, depth + 1, output, async, cancellationToken).ConfigureAwait(false);
        }

        if (inBacking < run.Length)
        {
            output.Add(new MapEntry(run.GuestOffset + inBacking, run.Length - inBacking, depth, Present: false, Zero: true, Data: false, null, null));
        }
    }

    private void AddWithHoles(MappingRun run, int depth, List<MapEntry> output)
    {
        var storage = _session.GuestDataFile;
        var done = 0L;
        while (done < run.Length)
        {
            var host = run.HostOffset + done;
            if (!storage.TryGetDataExtent(host, out var isData, out var extentEnd) || extentEnd <= host)
            {
                isData = true;
                extentEnd = long.MaxValue;
            }

            var length = Math.Min(run.Length - done, extentEnd - host);
            output.Add(new MapEntry(run.GuestOffset + done, length, depth, Present: true, Zero: !isData, Data: true, host, storage.Path));
            done += length;
        }
    }

    /// <summary>
    /// QEMU's qcow2_detect_metadata_preallocation: far more refcounted clusters than blocks really
    /// allocated in the file means clusters were preallocated without data, so holes inside data
    /// clusters read as zeros and block status reports them as such.
    /// </summary>
    private async ValueTask<bool> IsMetadataPreallocatedAsync(bool async, CancellationToken cancellationToken)
    {
        if (_metadataPreallocated is bool known)
        {
            return known;
        }

        var allocated = FileSystemInfoProbe.AllocatedBytes(_metadata.File);
        var realClusters = allocated / _metadata.Geometry.ClusterSize;
        var threshold = Math.Max(realClusters * 10 / 9, realClusters + 2);
        var fileLength = _metadata.RefreshFileLength();
        var endCluster = _metadata.Geometry.ClustersFor(fileLength);
        long counted = 0;
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            var refcounts = await _metadata.GetRefcountsLockedAsync(async, cancellationToken).ConfigureAwait(false);
            for (long cluster = 0; cluster < endCluster && counted < threshold; cluster++)
            {
                if (await refcounts.GetAsync(cluster, fileLength, async, cancellationToken).ConfigureAwait(false) != 0)
                {
                    counted++;
                }
            }
        }

        _metadataPreallocated = counted >= threshold;
        return _metadataPreallocated.Value;
    }

    public async ValueTask<IReadOnlyList<GuestExtent>> GetExtentsAsync(long offset, long length, bool async, CancellationToken cancellationToken)
    {
        var extents = new List<GuestExtent>();
        var position = offset;
        var end = offset + length;
        while (position < end)
        {
            var run = await GetRunAsync(position, end - position, async, cancellationToken).ConfigureAwait(false);
            var (kind, host) = run.Type switch
            {
                SubclusterType.Normal => (ExtentKind.Allocated, (long?)run.HostOffset),
                SubclusterType.Compressed => (ExtentKind.Allocated, null),
                SubclusterType.ZeroPlain => (ExtentKind.Zero, null),
                SubclusterType.ZeroAllocated => (ExtentKind.Zero, run.HostOffset),
                _ => (_session.Backing is null ? ExtentKind.Unallocated : ExtentKind.Backing, (long?)null),
            };
            var compressed = run.Type == SubclusterType.Compressed;
            if (extents.Count > 0 && extents[^1] is var last && last.Kind == kind && last.IsCompressed == compressed
                && (last.HostOffset is null ? host is null : host == last.HostOffset + last.Length) && !compressed)
            {
                extents[^1] = last with { Length = last.Length + run.Length };
            }
            else
            {
                extents.Add(new GuestExtent(run.GuestOffset, run.Length, kind, host, compressed));
            }

            position = run.End;
        }

        return extents;
    }

    private async ValueTask<MappingRun> GetRunAsync(long position, long maxLength, bool async, CancellationToken cancellationToken)
    {
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            return await _map.GetRunLockedAsync(position, maxLength, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Merges adjacent entries as qemu-img map does.</summary>
    public static List<MapEntry> Merge(List<MapEntry> entries)
    {
        var merged = new List<MapEntry>(entries.Count);
        foreach (var entry in entries)
        {
            if (merged.Count > 0 && merged[^1] is var last
                && last.Depth == entry.Depth && last.Present == entry.Present && last.Zero == entry.Zero && last.Data == entry.Data
                && last.File == entry.File
                && (last.Offset is null ? entry.Offset is null : entry.Offset == last.Offset + last.Length))
            {
                merged[^1] = last with { Length = last.Length + entry.Length };
            }
            else
            {
                merged.Add(entry);
            }
        }

        return merged;
    }
}
