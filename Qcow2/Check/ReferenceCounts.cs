namespace QcowDedup.Qcow2.Check;

/// <summary>
/// The check's computed references per host cluster, in pages allocated on first use. A file's
/// length is not a size an image can be trusted with: a valid image in a 200 TiB sparse file
/// references a few clusters, so memory follows the clusters referenced, not the file length.
/// </summary>
internal sealed class ReferenceCounts
{
    /// <summary>
    /// Most clusters a check covers. QEMU's check refuses larger files (nb_clusters > INT_MAX,
    /// "Check failed: File too large"); keeping its limit keeps its verdict.
    /// </summary>
    public const long MaxClusters = int.MaxValue;

    private const int PageBits = 16;
    private const int PageSize = 1 << PageBits;

    private uint[]?[] _pages;

    public ReferenceCounts(long length)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxClusters);
        Length = length;
        _pages = new uint[]?[PagesFor(length)];
    }

    /// <summary>Clusters covered (the file's clusters, or more when a repair grew the file).</summary>
    public long Length { get; private set; }

    /// <summary>References of <paramref name="cluster"/>; zero outside the covered range.</summary>
    public uint this[long cluster] =>
        cluster >= 0 && cluster < Length && _pages[cluster >> PageBits] is { } page ? page[cluster & (PageSize - 1)] : 0;

    public void Set(long cluster, uint value)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(cluster);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(cluster, Length);
        var page = _pages[cluster >> PageBits] ??= new uint[PageSize];
        page[cluster & (PageSize - 1)] = value;
    }

    /// <summary>Covers at least <paramref name="length"/> clusters.</summary>
    public void Grow(long length)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxClusters);
        if (length > Length)
        {
            Array.Resize(ref _pages, PagesFor(length));
            Length = length;
        }
    }

    /// <summary>Whether no cluster of [first, end) has a reference (cheap: whole pages never touched).</summary>
    public bool NoneIn(long first, long end)
    {
        end = Math.Min(end, Length);
        for (var page = first >> PageBits; first < end && page <= (end - 1) >> PageBits; page++)
        {
            if (_pages[page] is { } counts)
            {
                var from = (int)Math.Max(0, first - (page << PageBits));
                var to = (int)Math.Min(PageSize, end - (page << PageBits));
                if (counts.AsSpan(from, to - from).ContainsAnyExcept(0u))
                {
                    return false;
                }
            }
        }

        return true;
    }

    /// <summary>The references up to the highest referenced cluster, as one array (for a rebuild or a width change).</summary>
    public uint[] ToArray()
    {
        var pages = _pages.Length;
        while (pages > 0 && (_pages[pages - 1] is null || !_pages[pages - 1]!.AsSpan().ContainsAnyExcept(0u)))
        {
            pages--;
        }

        if (pages == 0)
        {
            return [];
        }

        var last = _pages[pages - 1]!.AsSpan().LastIndexOfAnyExcept(0u);
        var result = new uint[((long)(pages - 1) << PageBits) + last + 1];
        for (var page = 0; page < pages; page++)
        {
            if (_pages[page] is { } counts)
            {
                var start = page << PageBits;
                counts.AsSpan(0, Math.Min(PageSize, result.Length - start)).CopyTo(result.AsSpan(start));
            }
        }

        return result;
    }

    private static int PagesFor(long length) => (int)((length + PageSize - 1) >> PageBits);
}
