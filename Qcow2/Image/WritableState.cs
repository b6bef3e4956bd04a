using System.Collections.Concurrent;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// What a read-write session adds to an open image, created once when the open succeeds: the
/// writable metadata, the allocator seam and the sharing state the write path keeps beside it.
/// Callers hold the metadata lock unless a member says otherwise.
/// </summary>
internal sealed class WritableState
{
    private readonly ImageSession _session;

    /// <param name="session">The open image.</param>
    /// <param name="refcountTable">Its refcount table, loaded.</param>
    public WritableState(ImageSession session, RefcountTable refcountTable)
    {
        _session = session;
        Metadata = new WritableMetadata(session.Metadata, refcountTable, session.GuestDataFile, OnDataFreed, session.Options.ReturnFreedSpace);
    }

    /// <summary>Refcounts, tables, the dirty window and the ordered flush.</summary>
    public WritableMetadata Metadata { get; }

    public RefcountAllocator Refcounts => Metadata.Refcounts;

    public ActiveTables Tables => Metadata.Tables;

    /// <summary>Where data clusters go (the allocator seam): fresh clusters until the extensions are open.</summary>
    public IClusterAllocator Allocator { get; set; } = FreshClusterAllocator.Instance;

    /// <summary>Guest clusters sharing host clusters through the allocator in this session.</summary>
    public SharedReferrers Referrers { get; } = new();

    /// <summary>
    /// Data clusters being written in place right now (added under the metadata lock when the
    /// write decides so, removed when its bytes are written, without the lock): sharing refuses them.
    /// </summary>
    public ConcurrentDictionary<long, byte> InPlaceWrites { get; } = new();

    /// <summary>
    /// Contents (allocator fingerprints) being stored in fresh clusters right now, added under the
    /// metadata lock at allocation and removed once linked: writers of the same bytes wait for them.
    /// </summary>
    public ConcurrentDictionary<ClusterFingerprint, TaskCompletionSource> PlacementsInFlight { get; } = new();

    /// <summary>Host clusters that dropped to one referrer which could not be found yet (COPIED to set).</summary>
    public HashSet<long> PendingCopiedFixups { get; } = [];

    /// <summary>Forgets every sharing fact of the active disk (its tree was replaced).</summary>
    public void ForgetSharing()
    {
        Referrers.Clear();
        PendingCopiedFixups.Clear();
        _session.Decompressed.Invalidate();
    }

    /// <summary>Sets COPIED where a shared cluster was left with an unknown sole referrer, then flushes everything in order.</summary>
    public async ValueTask FlushAsync(bool async, CancellationToken cancellationToken)
    {
        if (PendingCopiedFixups.Count > 0)
        {
            await ResolvePendingCopiedAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await Metadata.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A data cluster's refcount reached zero: cached copies and sharing facts about it are gone.</summary>
    private void OnDataFreed(long offset, ClusterUse use)
    {
        _session.Decompressed.Invalidate();
        Referrers.Forget(offset);
        Allocator.OnFreed(offset);
    }

    /// <summary>
    /// Finds the one remaining referrer of each shared cluster that dropped to refcount 1 without
    /// a known referrer, by scanning the active L2 tables once, and sets its COPIED flag.
    /// </summary>
    private async ValueTask ResolvePendingCopiedAsync(bool async, CancellationToken cancellationToken)
    {
        var metadata = _session.Metadata;
        var geometry = metadata.Geometry;
        var found = new Dictionary<long, List<long>>();
        for (long l1Index = 0; l1Index < metadata.ActiveL1.Size; l1Index++)
        {
            var l2Offset = metadata.ActiveL1[l1Index].L2TableOffset;
            if (l2Offset == 0)
            {
                continue;
            }

            using var table = await metadata.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < geometry.L2Entries; i++)
            {
                var entry = L2Table.ReadEntry(table.Span, i, geometry.ExtendedL2);
                if (entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile) is ClusterType.Normal or ClusterType.ZeroAllocated
                    && PendingCopiedFixups.Contains(entry.HostOffset))
                {
                    var guest = (l1Index << geometry.L2CoverageBits) + ((long)i << geometry.ClusterBits);
                    if (!found.TryGetValue(entry.HostOffset, out var guests))
                    {
                        found[entry.HostOffset] = guests = [];
                    }

                    guests.Add(guest);
                }
            }
        }

        foreach (var (host, guests) in found)
        {
            if (guests.Count == 1 && await Refcounts.GetAsync(host >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) == 1)
            {
                var (entry, bitmap) = await Tables.ReadEntryAsync(guests[0], async, cancellationToken).ConfigureAwait(false);
                using var writable = await Tables.GetWritableAsync(guests[0], async, cancellationToken).ConfigureAwait(false);
                await Tables.SetEntryAfterRefcountsAsync(writable, guests[0], entry.WithCopied(true), bitmap, async, cancellationToken).ConfigureAwait(false);
            }
        }

        PendingCopiedFixups.Clear();
    }
}
