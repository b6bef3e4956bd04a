namespace QcowDedup.Qcow2.Metadata;

/// <summary>Kinds of metadata QEMU's overlap check tells apart (QCOW2_OL_*), in the order it tests them.</summary>
[Flags]
internal enum MetadataKind
{
    None = 0,
    MainHeader = 1 << 0,
    ActiveL1 = 1 << 1,
    ActiveL2 = 1 << 2,
    RefcountTable = 1 << 3,
    RefcountBlock = 1 << 4,
    SnapshotTable = 1 << 5,
    InactiveL1 = 1 << 6,
    InactiveL2 = 1 << 7,
    BitmapDirectory = 1 << 8,

    /// <summary>Bitmap tables: not in QEMU's check, but referenced metadata all the same.</summary>
    BitmapTable = 1 << 9,

    /// <summary>What QEMU's default "cached" mode checks: everything it knows but inactive L2 tables.</summary>
    QemuCached = MainHeader | ActiveL1 | ActiveL2 | RefcountTable | RefcountBlock | SnapshotTable | InactiveL1 | BitmapDirectory,

    /// <summary>Every structure the image's metadata references.</summary>
    Everything = QemuCached | InactiveL2 | BitmapTable,
}

/// <summary>
/// Where the image's metadata lies, as host cluster runs per kind: immutable, so the data write
/// path reads it without the metadata lock while writers publish a new one (see
/// <see cref="MetadataOverlapTracker"/>). Lookups are binary searches.
/// </summary>
internal sealed class MetadataOverlapIndex
{
    private readonly int _clusterBits;
    private readonly (MetadataKind Kind, string Name, ClusterRuns Runs)[] _parts;

    public MetadataOverlapIndex(int clusterBits, (MetadataKind Kind, string Name, ClusterRuns Runs)[] parts)
    {
        _clusterBits = clusterBits;
        _parts = parts;
    }

    /// <summary>
    /// The name QEMU gives the first structure (in QEMU's order) of a kind in <paramref name="check"/>
    /// that [offset, offset + size) would overwrite, or null.
    /// </summary>
    public string? Find(long offset, long size, MetadataKind check)
    {
        if (size <= 0)
        {
            return null;
        }

        var first = offset >> _clusterBits;
        var end = ((offset + size - 1) >> _clusterBits) + 1;
        foreach (var (kind, name, runs) in _parts)
        {
            if ((check & kind) != 0 && runs.FirstOverlapEnd(first, end) is not null)
            {
                return name;
            }
        }

        return null;
    }

    /// <summary>
    /// The end of a metadata run overlapping clusters [start, start + count), if any, so that a free
    /// space search can continue after it. Every kind counts: allocation never hands out metadata.
    /// </summary>
    public long? FirstOverlapEnd(long startCluster, long count)
    {
        foreach (var (_, _, runs) in _parts)
        {
            if (runs.FirstOverlapEnd(startCluster, startCluster + count) is long after)
            {
                return after;
            }
        }

        return null;
    }
}

/// <summary>Sorted, disjoint, merged runs of host clusters [start, end).</summary>
internal sealed class ClusterRuns
{
    private readonly long[] _starts;
    private readonly long[] _ends;

    private ClusterRuns(long[] starts, long[] ends)
    {
        _starts = starts;
        _ends = ends;
    }

    public static ClusterRuns Empty { get; } = new([], []);

    public int Count => _starts.Length;

    /// <summary>Runs covering every byte range [offset, offset + length) given (empty ranges are skipped).</summary>
    public static ClusterRuns FromByteRanges(IEnumerable<(long Offset, long Length)> ranges, int clusterBits)
    {
        var clusters = new List<(long Start, long End)>();
        foreach (var (offset, length) in ranges)
        {
            if (length > 0 && offset >= 0)
            {
                clusters.Add((offset >> clusterBits, ((offset + length - 1) >> clusterBits) + 1));
            }
        }

        if (clusters.Count == 0)
        {
            return Empty;
        }

        clusters.Sort();
        var starts = new List<long>(clusters.Count);
        var ends = new List<long>(clusters.Count);
        foreach (var (start, end) in clusters)
        {
            if (ends.Count > 0 && start <= ends[^1])
            {
                ends[^1] = Math.Max(ends[^1], end);
            }
            else
            {
                starts.Add(start);
                ends.Add(end);
            }
        }

        return new ClusterRuns([.. starts], [.. ends]);
    }

    /// <summary>Runs of the given clusters, which are sorted and distinct.</summary>
    public static ClusterRuns FromSortedClusters(List<long> clusters)
    {
        if (clusters.Count == 0)
        {
            return Empty;
        }

        var starts = new List<long>();
        var ends = new List<long>();
        foreach (var cluster in clusters)
        {
            if (ends.Count > 0 && cluster == ends[^1])
            {
                ends[^1] = cluster + 1;
            }
            else
            {
                starts.Add(cluster);
                ends.Add(cluster + 1);
            }
        }

        return new ClusterRuns([.. starts], [.. ends]);
    }

    /// <summary>The end of the run overlapping clusters [start, end), or null.</summary>
    public long? FirstOverlapEnd(long start, long end)
    {
        int low = 0, high = _ends.Length;
        while (low < high)
        {
            var middle = (low + high) >>> 1;
            if (_ends[middle] > start)
            {
                high = middle;
            }
            else
            {
                low = middle + 1;
            }
        }

        return low < _ends.Length && _starts[low] < end ? _ends[low] : null;
    }
}
