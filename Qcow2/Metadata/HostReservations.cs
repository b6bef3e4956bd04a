namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Host cluster ranges that extensions own without refcounting them (for example a deduplication
/// index kept in refcount-0 clusters). The allocator, refcount block placement, table growth and
/// refcount rebuilds never hand these clusters out. Kept as sorted, disjoint, merged ranges so a
/// lookup is a binary search.
/// </summary>
internal sealed class HostReservations
{
    private readonly Lock _sync = new();
    private readonly List<(long Start, long End)> _ranges = [];

    /// <summary>Reserves clusters [start, end).</summary>
    public void Add(long startCluster, long endCluster)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(startCluster, endCluster);
        lock (_sync)
        {
            var index = FirstEndingAfter(startCluster - 1);
            var start = startCluster;
            var end = endCluster;
            while (index < _ranges.Count && _ranges[index].Start <= end)
            {
                start = Math.Min(start, _ranges[index].Start);
                end = Math.Max(end, _ranges[index].End);
                _ranges.RemoveAt(index);
            }

            _ranges.Insert(index, (start, end));
        }
    }

    /// <summary>Releases clusters [start, end) (parts of ranges are split off as needed).</summary>
    public void Remove(long startCluster, long endCluster)
    {
        lock (_sync)
        {
            var index = FirstEndingAfter(startCluster);
            while (index < _ranges.Count && _ranges[index].Start < endCluster)
            {
                var (start, end) = _ranges[index];
                _ranges.RemoveAt(index);
                if (end > endCluster)
                {
                    _ranges.Insert(index, (endCluster, end));
                }

                if (start < startCluster)
                {
                    _ranges.Insert(index, (start, startCluster));
                    index++;
                }
            }
        }
    }

    /// <summary>Every reserved range, in order.</summary>
    public IReadOnlyList<(long Start, long End)> Snapshot()
    {
        lock (_sync)
        {
            return [.. _ranges];
        }
    }

    /// <summary>Whether any cluster of [start, start + count) is reserved.</summary>
    public bool Overlaps(long startCluster, long count) => FirstOverlapEnd(startCluster, count) is not null;

    /// <summary>
    /// The end of the reserved range overlapping [start, start + count), if any, so that a search
    /// can continue right after it.
    /// </summary>
    public long? FirstOverlapEnd(long startCluster, long count)
    {
        lock (_sync)
        {
            var index = FirstEndingAfter(startCluster);
            return index < _ranges.Count && _ranges[index].Start < startCluster + count ? _ranges[index].End : null;
        }
    }

    /// <summary>Whether [start, end) lies entirely inside one reserved range.</summary>
    public bool Covers(long startCluster, long endCluster)
    {
        lock (_sync)
        {
            var index = FirstEndingAfter(startCluster);
            return index < _ranges.Count && _ranges[index].Start <= startCluster && _ranges[index].End >= endCluster;
        }
    }

    /// <summary>End (exclusive) of the highest reserved cluster, or 0.</summary>
    public long HighestEnd()
    {
        lock (_sync)
        {
            return _ranges.Count == 0 ? 0 : _ranges[^1].End;
        }
    }

    /// <summary>Index of the first range whose end lies after <paramref name="cluster"/>.</summary>
    private int FirstEndingAfter(long cluster)
    {
        int low = 0, high = _ranges.Count;
        while (low < high)
        {
            var middle = (low + high) / 2;
            if (_ranges[middle].End > cluster)
            {
                high = middle;
            }
            else
            {
                low = middle + 1;
            }
        }

        return low;
    }
}
