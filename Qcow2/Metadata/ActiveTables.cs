using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Changes to the active L1/L2 tables, with QEMU's ordering: a new L2 table's refcount reaches the
/// disk before the table, the table before the L1 entry; a shared table is copied first and the
/// L1 entry moved to the copy before the old table's refcount drops. Callers hold the metadata lock.
/// </summary>
internal sealed class ActiveTables(IStorage file, Geometry geometry, L1Table l1, TableCache l2Cache, TableCache refcountCache, RefcountAllocator refcounts, Func<bool> accurateRefcounts)
{
    /// <summary>Reads the entry (and bitmap) mapping <paramref name="guestOffset"/>, without changing anything.</summary>
    public async ValueTask<(L2Entry Entry, SubclusterBitmap Bitmap)> ReadEntryAsync(long guestOffset, bool async, CancellationToken cancellationToken)
    {
        var l2Offset = l1[geometry.L1Index(guestOffset)].L2TableOffset;
        if (l2Offset == 0)
        {
            return default;
        }

        using var table = await l2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
        var index = geometry.L2Index(guestOffset);
        return (L2Table.ReadEntry(table.Span, index, geometry.ExtendedL2), L2Table.ReadBitmap(table.Span, index, geometry.ExtendedL2));
    }

    /// <summary>
    /// Returns the L2 table mapping <paramref name="guestOffset"/>, ready to be modified: allocated
    /// when the L1 entry is empty, copied when the table is shared (refcount above 1).
    /// </summary>
    public async ValueTask<TableHandle> GetWritableAsync(long guestOffset, bool async, CancellationToken cancellationToken)
    {
        var l1Index = geometry.L1Index(guestOffset);
        if (l1Index >= l1.Size)
        {
            throw new InvalidOperationException($"Guest offset {guestOffset} lies beyond the L1 table ({l1.Size} entries).");
        }

        var entry = l1[l1Index];
        var oldOffset = entry.L2TableOffset;
        if (oldOffset == 0)
        {
            var offset = await refcounts.AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);
            var created = await l2Cache.CreateAsync(offset, async, cancellationToken).ConfigureAwait(false);
            await OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
            l1.SetDeferred(l1Index, L1Entry.ForTable(offset, copied: true));
            return created;
        }

        if (!geometry.IsClusterAligned(oldOffset))
        {
            throw Qcow2Corruption.Create("L1 table", $"entry {l1Index} points at L2 table offset 0x{oldOffset:x}, which is not cluster aligned", l1.Offset);
        }

        var refcount = await refcounts.GetAsync(oldOffset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false);
        if (refcount == 1)
        {
            if (!entry.IsCopied)
            {
                l1.SetDeferred(l1Index, entry.WithCopied(true));
            }

            return await l2Cache.GetAsync(oldOffset, async, cancellationToken).ConfigureAwait(false);
        }

        if (refcount == 0)
        {
            throw Qcow2Corruption.Create("L1 table", $"entry {l1Index} points at an L2 table at 0x{oldOffset:x} whose refcount is 0", l1.Offset);
        }

        return await CopySharedTableAsync(l1Index, oldOffset, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Writes a new descriptor (and bitmap) for <paramref name="guestOffset"/> into a writable table.</summary>
    public void SetEntry(TableHandle table, long guestOffset, L2Entry entry, SubclusterBitmap bitmap)
    {
        var index = geometry.L2Index(guestOffset);
        L2Table.WriteEntry(table.Span, index, geometry.ExtendedL2, entry);
        if (geometry.ExtendedL2)
        {
            L2Table.WriteBitmap(table.Span, index, bitmap);
        }

        TableCache.MarkDirty(table);
    }

    /// <summary>
    /// Points a guest cluster at new content: the entry reaches the disk after the refcounts it
    /// relies on and after the guest data it exposes (written in place or copied).
    /// </summary>
    public async ValueTask SetEntryAfterDataAsync(TableHandle table, long guestOffset, L2Entry entry, SubclusterBitmap bitmap, bool async, CancellationToken cancellationToken)
    {
        await OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
        l2Cache.FlushStorageBeforeWrite = true;
        SetEntry(table, guestOffset, entry, bitmap);
    }

    /// <summary>Changes an entry (COPIED set again, say) so that it reaches the disk after the refcounts it reflects.</summary>
    public async ValueTask SetEntryAfterRefcountsAsync(TableHandle table, long guestOffset, L2Entry entry, SubclusterBitmap bitmap, bool async, CancellationToken cancellationToken)
    {
        await OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
        SetEntry(table, guestOffset, entry, bitmap);
    }

    /// <summary>
    /// Clears COPIED on the sole referrer of a cluster about to gain another referrer. When the
    /// new referrer's entry lies in another L2 table, this table is written before any other, so
    /// no one ever sees two referrers of a cluster one of which still claims it alone.
    /// </summary>
    public void ClearCopiedBeforeSharing(TableHandle table, long guestOffset, L2Entry entry, SubclusterBitmap bitmap, long newReferrer)
    {
        SetEntry(table, guestOffset, entry.WithCopied(false), bitmap);
        if (geometry.L1Index(guestOffset) != geometry.L1Index(newReferrer))
        {
            l2Cache.MarkDirtyWriteFirst(table);
        }
    }

    /// <summary>Writes entry <paramref name="index"/> of any L2 table (a snapshot's too) held from the cache.</summary>
    public void SetEntryAt(TableHandle table, int index, L2Entry entry)
    {
        L2Table.WriteEntry(table.Span, index, geometry.ExtendedL2, entry);
        TableCache.MarkDirty(table);
    }

    /// <summary>
    /// Entries changed since the last flush expose guest data written through the data file: the
    /// data is flushed before the first of those tables is written (cleared by the next flush).
    /// </summary>
    public void OrderAfterGuestData() => l2Cache.FlushStorageBeforeWrite = true;

    /// <summary>
    /// Makes the L2 cache wait for the refcount cache: entries pointing at newly referenced clusters
    /// must not reach the disk before the increments. Skipped with lazy refcounts (the dirty bit
    /// covers them).
    /// </summary>
    public ValueTask OrderAfterRefcountsAsync(bool async, CancellationToken cancellationToken) =>
        accurateRefcounts() ? l2Cache.SetDependencyAsync(refcountCache, async, cancellationToken) : ValueTask.CompletedTask;

    private async ValueTask<TableHandle> CopySharedTableAsync(long l1Index, long oldOffset, bool async, CancellationToken cancellationToken)
    {
        var copyOffset = await refcounts.AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);

        // The copy's refcount goes to disk before the copy exists in the L2 cache (as QEMU's
        // l2_allocate): a pending decrement can make the refcount cache depend on the L2 cache, and
        // resolving that would otherwise write the copy, and then the L1 entry, ahead of its refcount.
        if (accurateRefcounts())
        {
            await refcountCache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        var copy = await l2Cache.CreateAsync(copyOffset, async, cancellationToken).ConfigureAwait(false);
        try
        {
            using (var original = await l2Cache.GetAsync(oldOffset, async, cancellationToken).ConfigureAwait(false))
            {
                original.Span.CopyTo(copy.Span);
            }

            // The copy, then the L1 entry, must be on disk before the old table loses a reference.
            await OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
            await l2Cache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            await l1.SetAsync(file, l1Index, L1Entry.ForTable(copyOffset, copied: true), async, cancellationToken).ConfigureAwait(false);
            await file.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            await refcounts.ChangeAsync(oldOffset >> geometry.ClusterBits, -1, ClusterUse.L2Table, async, cancellationToken).ConfigureAwait(false);
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }
}

/// <summary>
/// Which guest clusters share a host cluster through the allocator seam in this session, so that
/// when a shared cluster drops back to one referrer that referrer's COPIED flag can be set again.
/// </summary>
internal sealed class SharedReferrers
{
    private readonly Dictionary<long, List<long>> _byHost = [];

    public int Count => _byHost.Count;

    public void Add(long hostOffset, long guestOffset)
    {
        if (!_byHost.TryGetValue(hostOffset, out var guests))
        {
            _byHost[hostOffset] = guests = [];
        }

        if (!guests.Contains(guestOffset))
        {
            guests.Add(guestOffset);
        }
    }

    /// <summary>Known guests sharing the host cluster (may include stale ones; callers verify).</summary>
    public IReadOnlyList<long> Get(long hostOffset) => _byHost.TryGetValue(hostOffset, out var guests) ? guests : [];

    /// <summary>Records that a guest no longer maps the host cluster.</summary>
    public void RemoveGuest(long hostOffset, long guestOffset)
    {
        if (_byHost.TryGetValue(hostOffset, out var guests))
        {
            guests.Remove(guestOffset);
            if (guests.Count == 0)
            {
                _byHost.Remove(hostOffset);
            }
        }
    }

    public void Forget(long hostOffset) => _byHost.Remove(hostOffset);

    public void Clear() => _byHost.Clear();
}
