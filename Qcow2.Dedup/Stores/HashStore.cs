using QcowDedup.Qcow2.Dedup.Format;

namespace QcowDedup.Qcow2.Dedup.Stores;

/// <summary>
/// The frozen log stores (incarnations), youngest first, and the limbo list: areas of dropped
/// incarnations, still reserved, which the next freeze reuses instead of growing the file.
/// </summary>
internal sealed class HashStore
{
    private readonly List<Incarnation> _live = [];
    private readonly List<(long Offset, long Bytes)> _limbo = [];

    /// <summary>Live incarnations, youngest first.</summary>
    public IReadOnlyList<Incarnation> Live => _live;

    /// <summary>Areas awaiting reuse.</summary>
    public IReadOnlyList<(long Offset, long Bytes)> Limbo => _limbo;

    /// <summary>RAM of the loaded filters.</summary>
    public long FilterMemoryBytes => _live.Sum(i => i.FilterMemoryBytes);

    /// <summary>Entries in live incarnations.</summary>
    public long Entries => _live.Sum(i => i.Entries);

    /// <summary>Smallest sequence number any live incarnation holds.</summary>
    public long MinimumSequence => _live.Count == 0 ? long.MaxValue : _live.Min(i => i.FirstSequence);

    public void AddYoungest(Incarnation incarnation) => _live.Insert(0, incarnation);

    /// <summary>Adds an incarnation older than every one held (used while loading the list, youngest first).</summary>
    public void AddOldest(Incarnation incarnation) => _live.Add(incarnation);

    public void AddLimbo(long offset, long bytes) => _limbo.Add((offset, bytes));

    /// <summary>Moves the oldest incarnation to limbo: its entries are forgotten, its area kept for reuse.</summary>
    public Incarnation DropOldest()
    {
        var oldest = _live[^1];
        _live.RemoveAt(_live.Count - 1);
        oldest.Unload();
        _limbo.Add((oldest.Offset, Incarnation.AreaBytes(oldest.Order)));
        return oldest;
    }

    /// <summary>Takes a limbo area of exactly <paramref name="bytes"/> bytes for reuse.</summary>
    public long? TakeLimbo(long bytes)
    {
        var index = _limbo.FindIndex(area => area.Bytes == bytes);
        if (index < 0)
        {
            return null;
        }

        var offset = _limbo[index].Offset;
        _limbo.RemoveAt(index);
        return offset;
    }

    /// <summary>The list records describing live and limbo incarnations.</summary>
    public List<IncarnationRecord> Records() =>
    [
        .. _live.Select(i => new IncarnationRecord(true, i.Order, i.Generation, i.Offset, Incarnation.AreaBytes(i.Order), i.Entries, i.FirstSequence, i.EndSequence)),
        .. _limbo.Select(l => new IncarnationRecord(false, 1, 0, l.Offset, l.Bytes, 0, 0, 0)),
    ];
}
