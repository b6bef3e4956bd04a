using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup;

/// <summary>What an offline deduplication pass did.</summary>
/// <param name="ClustersScanned">Allocated data clusters read.</param>
/// <param name="ClustersShared">Clusters now sharing another cluster's host cluster.</param>
/// <param name="ZeroClusters">All-zero data clusters turned into zero clusters.</param>
/// <param name="BytesFreed">Host bytes no longer needed.</param>
public sealed record OfflineDedupResult(long ClustersScanned, long ClustersShared, long ZeroClusters, long BytesFreed);

/// <summary>
/// Deduplicates an existing image (made by anyone) in place: hashes every allocated data cluster
/// of the active disk, makes duplicates share one host cluster, turns all-zero clusters into zero
/// clusters, and leaves an index behind for later writes. Unique clusters stay where they are.
/// </summary>
public static class OfflineDeduplicator
{
    /// <summary>Opens <paramref name="path"/> read-write with deduplication and runs the pass.</summary>
    public static OfflineDedupResult Run(string path, DedupOptions? options = null, IProgress<double>? progress = null)
    {
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup((options ?? new DedupOptions()) with { Enable = true }));
        return Run(image, progress);
    }

    /// <summary>Runs the pass on an image opened read-write with <see cref="DedupImageExtensions.WithDedup(Qcow2OpenOptions, DedupOptions?)"/>.</summary>
    /// <exception cref="NotSupportedException">Extended L2 entries or an external data file (clusters cannot be shared there).</exception>
    public static OfflineDedupResult Run(Qcow2Image image, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (image.GetExtension<DedupExtension>()?.Index is not { State: DedupIndexState.Active } index)
        {
            throw new InvalidOperationException("The image must be open for writing with the dedup extension enabled.");
        }

        if (image.Info.ExtendedL2 || image.Info.DataFile is not null)
        {
            throw new NotSupportedException("Deduplication needs standard L2 entries and data clusters inside the image (no extended L2, no external data file).");
        }

        var clusterSize = image.ClusterSize;
        var cluster = new byte[clusterSize];
        long scanned = 0, shared = 0, zeros = 0;
        var extents = image.GetExtents(0, image.Size).Where(e => e.Kind == ExtentKind.Allocated && !e.IsCompressed).ToList();
        var total = Math.Max(1, extents.Sum(e => e.Length));
        long done = 0;
        foreach (var extent in extents)
        {
            for (var guest = extent.Start; guest < extent.End; guest += clusterSize)
            {
                var length = (int)Math.Min(clusterSize, image.Size - guest);
                var data = cluster.AsSpan(0, length);
                image.Read(guest, data);
                scanned++;
                if (!data.ContainsAnyExcept((byte)0))
                {
                    image.WriteZeroes(guest, length, unmap: true);
                    zeros++;
                }
                else if (length == clusterSize)
                {
                    shared += DedupCluster(image, index, guest, extent.HostOffset!.Value + (guest - extent.Start), cluster) ? 1 : 0;
                }

                done += length;
                progress?.Report((double)done / total);
            }
        }

        image.Flush();
        return new OfflineDedupResult(scanned, shared, zeros, (shared + zeros) * clusterSize);
    }

    /// <summary>
    /// Shares the cluster if the index knows its bytes (by writing them back: the allocator then
    /// answers with the existing cluster and the old one is freed); otherwise indexes it in place.
    /// </summary>
    private static bool DedupCluster(Qcow2Image image, DedupIndex index, long guest, long host, byte[] data)
    {
        var hash = ClusterHash.Compute(data);
        var known = index.RunLocked(() =>
        {
            if (index.FindUsable(hash, data, out _) is { } entry && entry.HostOffset != host)
            {
                return true;
            }

            index.Insert(hash, host, guest);
            return false;
        });
        if (!known)
        {
            return false;
        }

        var before = index.ClustersDeduplicated;
        image.Write(guest, data);
        return index.ClustersDeduplicated > before;
    }
}
