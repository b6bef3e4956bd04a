namespace QcowDedup.Qcow2.Image;

/// <summary>Sorted lists of disjoint byte ranges, as the copy and compare loops walk them.</summary>
internal static class ByteRanges
{
    /// <summary>Ranges of <paramref name="map"/> not reported as zeros, widened to whole granules (at most <paramref name="size"/>) and merged.</summary>
    public static List<(long Start, long End)> Granules(IEnumerable<MapEntry> map, long size, int granularity)
    {
        var ranges = new List<(long Start, long End)>();
        foreach (var entry in map.Where(e => !e.Zero))
        {
            var start = entry.Start / granularity * granularity;
            var end = Math.Min(size, (entry.End + granularity - 1) / granularity * granularity);
            Append(ranges, start, end);
        }

        return ranges;
    }

    /// <summary>Merges two sorted lists of disjoint ranges into one.</summary>
    public static List<(long Start, long End)> Union(List<(long Start, long End)> first, List<(long Start, long End)> second)
    {
        var merged = new List<(long Start, long End)>();
        foreach (var (start, end) in first.Concat(second).OrderBy(r => r.Start))
        {
            Append(merged, start, end);
        }

        return merged;
    }

    public static bool Overlaps(List<(long Start, long End)> ranges, long start, long end)
    {
        // Sorted and disjoint: the first range ending after start is the only candidate.
        int low = 0, high = ranges.Count;
        while (low < high)
        {
            var middle = (low + high) >>> 1;
            if (ranges[middle].End <= start)
            {
                low = middle + 1;
            }
            else
            {
                high = middle;
            }
        }

        return low < ranges.Count && ranges[low].Start < end;
    }

    private static void Append(List<(long Start, long End)> ranges, long start, long end)
    {
        if (ranges.Count > 0 && ranges[^1].End >= start)
        {
            ranges[^1] = (ranges[^1].Start, Math.Max(ranges[^1].End, end));
        }
        else
        {
            ranges.Add((start, end));
        }
    }
}
