using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Data clusters freed since the last flush, given back to the file system once that flush has
/// made their freeing durable (QEMU's <c>discard=unmap</c>): punched as holes, in runs. Punching
/// before would let a crash bring back a table entry that points at a hole. Only clusters the
/// writer vouches for are punched: a refcount that reached zero from an entry claiming sole
/// ownership (COPIED). On a damaged image a refcount can undercount, and a cluster it calls free
/// may still be another entry's data; keeping its blocks costs space, punching it would lose data.
/// </summary>
internal sealed class FreedSpace(IStorage file, int clusterBits)
{
    private readonly List<long> _clusters = [];

    /// <summary>A data cluster whose sole owner let it go (it stays quarantined until the next flush).</summary>
    public void Add(long cluster) => _clusters.Add(cluster);

    /// <summary>
    /// Punches every cluster added since the last call whose refcount is still zero. Call after the
    /// flush that made the frees durable and before the clusters leave quarantine. Caller holds the metadata lock.
    /// </summary>
    public async ValueTask PunchAsync(RefcountAllocator refcounts, bool async, CancellationToken cancellationToken)
    {
        if (_clusters.Count == 0)
        {
            return;
        }

        _clusters.Sort();
        long runStart = 0, runEnd = 0;
        var supported = true;
        foreach (var cluster in _clusters)
        {
            if (cluster < runEnd || await refcounts.GetAsync(cluster, async, cancellationToken).ConfigureAwait(false) != 0)
            {
                continue; // added twice, or in use again: a hole must never open under a cluster in use
            }

            if (cluster != runEnd)
            {
                supported = Punch(runStart, runEnd);
                if (!supported)
                {
                    break;
                }

                runStart = cluster;
            }

            runEnd = cluster + 1;
        }

        if (supported)
        {
            Punch(runStart, runEnd);
        }

        _clusters.Clear();
    }

    private bool Punch(long startCluster, long endCluster) =>
        endCluster == startCluster || file.TryPunchHole(startCluster << clusterBits, (endCluster - startCluster) << clusterBits);
}
