using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup;

/// <summary>Entry points: open or create images with deduplication, and read its statistics.</summary>
public static class DedupImageExtensions
{
    /// <summary>These options plus a new dedup extension (one per open).</summary>
    public static Qcow2OpenOptions WithDedup(this Qcow2OpenOptions options, DedupOptions? dedup = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options with { Extensions = [.. options.Extensions.Where(e => e is not DedupExtension), new DedupExtension(dedup)] };
    }

    /// <summary>Create options whose image is created with a dedup index (create -o dedup=on).</summary>
    public static Qcow2CreateOptions WithDedup(this Qcow2CreateOptions options, DedupOptions? dedup = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options with { OpenOptions = (options.OpenOptions ?? new Qcow2OpenOptions()).WithDedup(dedup) };
    }

    /// <summary>
    /// Deduplication figures of an image opened with the dedup extension: the index's counters
    /// and memory, and the sharing found in the active disk (a scan of its mappings).
    /// </summary>
    public static DedupStatistics GetDedupStatistics(this Qcow2Image image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var extension = image.GetExtension<DedupExtension>();
        var (references, unique) = CountSharing(image);
        var saved = (references - unique) * image.ClusterSize;
        if (extension?.Index is not { State: DedupIndexState.Active } index)
        {
            return new DedupStatistics
            {
                State = extension?.State ?? DedupIndexState.Absent,
                StaleReason = extension?.Index?.StaleReason,
                References = references,
                UniqueClusters = unique,
                BytesSaved = saved,
            };
        }

        index.WaitForFilters();
        return new DedupStatistics
        {
            State = index.State,
            ClustersWritten = index.ClustersWritten,
            ClustersDeduplicated = index.ClustersDeduplicated,
            References = references,
            UniqueClusters = unique,
            BytesSaved = saved,
            LogStoreEntries = index.LogStore.Count,
            LogStoreCapacity = index.LogStore.Capacity,
            IncarnationEntries = [.. index.HashStore.Live.Select(i => i.Entries)],
            LimboIncarnations = index.HashStore.Limbo.Count,
            IndexMemoryBytes = index.MemoryBytes,
            LogStoreMemoryBytes = index.LogStore.MemoryBytes,
            IncarnationMemoryBytes = index.HashStore.FilterMemoryBytes,
            Invalidations = index.Invalidations,
            MaxSharesPerCluster = index.ShareCap,
            Freezes = index.Freezes,
            Packs = index.Packs,
        };
    }

    /// <summary>Guest clusters mapped to data, and the distinct host clusters behind them.</summary>
    private static (long References, long Unique) CountSharing(Qcow2Image image)
    {
        var hosts = new HashSet<long>();
        long references = 0;
        foreach (var extent in image.GetExtents(0, image.Size))
        {
            if (extent.Kind != ExtentKind.Allocated || extent.HostOffset is not long host)
            {
                continue;
            }

            for (long done = 0; done < extent.Length; done += image.ClusterSize)
            {
                references++;
                hosts.Add(host + done - ((host + done) % image.ClusterSize));
            }
        }

        return (references, hosts.Count);
    }
}
