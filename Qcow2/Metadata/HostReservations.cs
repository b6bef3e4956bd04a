namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Host cluster ranges that an extension owns without refcounting them (for example a
/// deduplication index kept in refcount-0 clusters). The allocator, refcount block placement,
/// table growth and refcount rebuilds never hand these clusters out.
/// </summary>
internal sealed class HostReservations
{
    private readonly Lock _sync = new();
    private readonly SortedList<long, long> _ranges = []; // start cluster -> end cluster (exclusive)

    /// <summary>Reserves clusters [start, end).</summary>
    public void Add(long startCluster, long endCluster)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(startCluster, endCluster);
        lock (_sync)
        {
            _ranges[startCluster] = Math.Max(endCluster, _ranges.GetValueOrDefault(startCluster));
        }
    }

    /// <summary>Releases a range added earlier with the same start.</summary>
    public void Remove(long startCluster)
    {
        lock (_sync)
        {
            _ranges.Remove(startCluster);
        }
    }

    /// <summary>Every reserved range, in order.</summary>
    public IReadOnlyList<(long Start, long End)> Snapshot()
    {
        lock (_sync)
        {
            return [.. _ranges.Select(r => (r.Key, r.Value))];
        }
    }

    /// <summary>Whether any cluster of [start, start + count) is reserved.</summary>
    public bool Overlaps(long startCluster, long count) => FirstOverlapEnd(startCluster, count) is not null;

    /// <summary>
    /// The end of the reserved range that overlaps [start, start + count), if any, so a search can
    /// continue right after it.
    /// </summary>
    public long? FirstOverlapEnd(long startCluster, long count)
    {
        var end = startCluster + count;
        lock (_sync)
        {
            long? result = null;
            foreach (var (rangeStart, rangeEnd) in _ranges)
            {
                if (rangeStart >= end)
                {
                    break;
                }

                if (rangeEnd > startCluster)
                {
                    result = Math.Max(result ?? 0, rangeEnd);
                }
            }

            return result;
        }
    }

    /// <summary>End (exclusive) of the highest reserved cluster, or 0.</summary>
    public long HighestEnd()
    {
        lock (_sync)
        {
            return _ranges.Count == 0 ? 0 : _ranges.Values.Max();
        }
    }
}
