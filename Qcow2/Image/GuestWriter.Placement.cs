using System.Buffers;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Image;

internal sealed partial class GuestWriter
{
    /// <summary>
    /// Writes a cluster that needs a new host cluster (unallocated, zero, compressed, shared, or a
    /// rewrite the allocator kept out of place): builds the cluster's new content, asks the
    /// allocator where it goes, writes it, links it, then releases the old cluster.
    /// </summary>
    private async ValueTask WriteToNewClusterAsync(ClusterState state, int from, ReadOnlyMemory<byte> data, ClusterFingerprint? fingerprint, bool stable, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var clusterSize = geometry.ClusterSize;
        var to = from + data.Length;
        // A whole cluster is written from the caller's memory, unless it is hashed for sharing from
        // memory the caller may change meanwhile: the bytes hashed and the bytes stored must be one
        // copy. A part is merged into a copy first.
        var direct = from == 0 && data.Length == clusterSize && (stable || !_writable.Allocator.SharesClusters);
        var buffer = direct ? null : ArrayPool<byte>.Shared.Rent(clusterSize);
        ClusterFingerprint? inFlight = null;
        try
        {
            // With extended L2 a cluster without a host cluster only needs the written subclusters.
            var (writeStart, writeEnd) = geometry.ExtendedL2 && state.Type == ClusterType.Unallocated ? SubclusterSpan(from, to) : (0, clusterSize);
            var content = data;
            if (buffer is not null)
            {
                var merged = buffer.AsMemory(0, clusterSize);
                if (from != writeStart || to != writeEnd)
                {
                    await ReadWithinDiskAsync(state.ClusterStart + writeStart, merged[writeStart..writeEnd], async, cancellationToken).ConfigureAwait(false);
                }

                data.Span.CopyTo(merged.Span[from..]);
                content = merged;
            }

            var bitmap = NewBitmap(state, writeStart, writeEnd, from, to);
            var whole = writeStart == 0 && writeEnd == clusterSize && (!geometry.ExtendedL2 || (bitmap.Raw & SubclusterBitmap.AllAllocatedMask) == SubclusterBitmap.AllAllocatedMask);
            var request = new ClusterPlacementRequest(state.ClusterStart, content, fingerprint);
            if (whole && fingerprint is null && _writable.Allocator.SharesClusters && !geometry.ExternalDataFile)
            {
                request = request with { Fingerprint = _writable.Allocator.Fingerprint(content.Span) };
            }

            var (host, outcome) = await PlaceAsync(state, request, whole, async, cancellationToken).ConfigureAwait(false);
            inFlight = outcome == PlacementOutcome.Fresh ? InFlightKey(request) : null;
            if (outcome == PlacementOutcome.Unchanged)
            {
                return; // the guest cluster already maps a host cluster holding exactly these bytes
            }

            var shared = outcome == PlacementOutcome.Shared;
            if (!shared)
            {
                try
                {
                    await WriteDataAsync(host + writeStart, content[writeStart..writeEnd], async, cancellationToken).ConfigureAwait(false);
                }
                catch (IOException)
                {
                    await AbortAllocationAsync(host, async).ConfigureAwait(false);
                    throw;
                }
            }

            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                await LinkAsync(state, L2Entry.Normal(host, copied: !shared), bitmap, async, cancellationToken).ConfigureAwait(false);
                if (shared)
                {
                    _writable.Referrers.Add(host, state.ClusterStart);
                }
                else if (whole && !geometry.ExternalDataFile)
                {
                    _writable.Allocator.OnStored(request, host);
                }
            }
        }
        finally
        {
            if (inFlight is { } key && _writable.PlacementsInFlight.TryRemove(key, out var done))
            {
                done.TrySetResult(); // stored (the index knows it now) or failed: waiting writers ask again
            }

            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>
    /// Gives back a fresh cluster whose data write failed: nothing maps it, so without this it
    /// would leak. A failure here leaves the leak (harmless) and the first error is the one reported.
    /// </summary>
    private async ValueTask AbortAllocationAsync(long host, bool async)
    {
        try
        {
            using (await _metadata.MetadataLock.AcquireAsync(async, CancellationToken.None).ConfigureAwait(false))
            {
                await _writable.Refcounts.ChangeAsync(host >> _metadata.Geometry.ClusterBits, -1, ClusterUse.Data, async, CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (IOException)
        {
        }
    }

    /// <summary>The key under which a fresh placement of this request is announced to writers of the same bytes, or null when it is not.</summary>
    private ClusterFingerprint? InFlightKey(in ClusterPlacementRequest request) =>
        _writable.Allocator.SharesClusters && !_metadata.Geometry.ExternalDataFile ? request.Fingerprint : null;

    /// <summary>Clusters freed since the last flush (unusable until it) beyond which a data allocation flushes first: 64 MiB, at least 256 clusters.</summary>
    private int QuarantineFlushClusters => Math.Max(256, (64 << 20) >> _metadata.Geometry.ClusterBits);

    /// <summary>The subcluster bitmap after the write (unused without extended L2).</summary>
    private SubclusterBitmap NewBitmap(ClusterState state, int writeStart, int writeEnd, int from, int to)
    {
        if (!_metadata.Geometry.ExtendedL2)
        {
            return default;
        }

        if (state.Type == ClusterType.Compressed)
        {
            return SubclusterBitmap.AllAllocated; // the copy holds the whole decompressed cluster
        }

        var (spanStart, spanEnd) = SubclusterSpan(from, to);
        return WithAllocatedSpan(state.Bitmap, Math.Max(spanStart, writeStart), Math.Min(spanEnd, writeEnd));
    }

    /// <summary>Where a new cluster's content ends up.</summary>
    private enum PlacementOutcome
    {
        /// <summary>A freshly allocated host cluster the caller must write.</summary>
        Fresh,

        /// <summary>An existing host cluster with the same bytes gained a reference; nothing to write.</summary>
        Shared,

        /// <summary>The allocator named the host cluster this guest cluster already maps: nothing changes.</summary>
        Unchanged,
    }

    /// <summary>
    /// Chooses the host cluster: the guest offset with an external data file, else the allocator's
    /// answer. A write of bytes that another writer is storing in a fresh cluster right now waits
    /// for it and asks again, so that concurrent writes of one content share instead of each
    /// storing a copy (the allocator learns of a fresh cluster only once it is written and linked).
    /// </summary>
    private async ValueTask<(long Host, PlacementOutcome Outcome)> PlaceAsync(ClusterState state, ClusterPlacementRequest request, bool whole, bool async, CancellationToken cancellationToken)
    {
        if (_metadata.Geometry.ExternalDataFile)
        {
            return (state.ClusterStart, PlacementOutcome.Fresh); // data file clusters map 1:1 and are not refcounted
        }

        while (true)
        {
            var (placed, wait) = await TryPlaceAsync(state, request, whole, async, cancellationToken).ConfigureAwait(false);
            if (wait is null)
            {
                return placed;
            }

            // The other writer holds only its own range and needs only the metadata lock to finish.
            if (async)
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            else
            {
                wait.Wait(cancellationToken);
            }
        }
    }

    /// <summary>One attempt of <see cref="PlaceAsync"/>: a placement, or the in-flight store of the same bytes to wait for.</summary>
    private async ValueTask<((long Host, PlacementOutcome Outcome) Placed, Task? Wait)> TryPlaceAsync(ClusterState state, ClusterPlacementRequest request, bool whole, bool async, CancellationToken cancellationToken)
    {
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            var tracked = whole ? InFlightKey(request) : null;
            if (tracked is { } key && _writable.PlacementsInFlight.TryGetValue(key, out var other))
            {
                return (default, other.Task);
            }

            if (whole)
            {
                var placement = _writable.Allocator.Place(request);
                if (placement.IsExisting)
                {
                    // Rewriting the bytes a fully allocated cluster already holds needs no write at all.
                    if (state.Type == ClusterType.Normal && state.Entry.HostOffset == placement.ExistingHostOffset
                        && (!_metadata.Geometry.ExtendedL2 || state.Bitmap == SubclusterBitmap.AllAllocated))
                    {
                        _writable.Allocator.OnPlacementResolved(request, placement, shared: true);
                        return ((placement.ExistingHostOffset, PlacementOutcome.Unchanged), null);
                    }

                    var shared = await TryShareAsync(placement, state.ClusterStart, async, cancellationToken).ConfigureAwait(false);
                    _writable.Allocator.OnPlacementResolved(request, placement, shared);
                    if (shared)
                    {
                        return ((placement.ExistingHostOffset, PlacementOutcome.Shared), null);
                    }
                }
            }

            if (_writable.Refcounts.QuarantinedClusters >= QuarantineFlushClusters)
            {
                await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false); // lets freed clusters be reused instead of growing the file
            }

            var host = await _writable.Refcounts.AllocateClustersAsync(1, async, cancellationToken).ConfigureAwait(false);
            if (tracked is { } fresh)
            {
                // Removed (and completed) by the writer once the cluster is linked, or when it fails.
                _writable.PlacementsInFlight[fresh] = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            return ((host, PlacementOutcome.Fresh), null);
        }
    }

    /// <summary>
    /// Verifies and takes an allocator's "existing cluster" answer: the cluster must be allocated,
    /// below the refcount maximum, and mapped by a guest cluster we can see. A sole referrer loses
    /// COPIED before the new referrer's entry can reach the disk: both sit in one L2 table, or the
    /// referrer's table is written first. So no other writer ever sees two referrers of a cluster
    /// one of which still claims it alone (and would overwrite it in place).
    /// </summary>
    private async ValueTask<bool> TryShareAsync(ClusterPlacement placement, long newReferrer, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var host = placement.ExistingHostOffset;
        if (!geometry.IsClusterAligned(host) || host <= 0)
        {
            return false;
        }

        if (_writable.InPlaceWrites.ContainsKey(host))
        {
            return false; // its sole referrer is being rewritten in place: the bytes are changing
        }

        var refcounts = _writable.Refcounts;
        var refcount = await refcounts.GetAsync(host >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false);
        if (refcount == 0 || refcount >= geometry.MaxRefcount)
        {
            return false;
        }

        // The allocator's referrer first (almost always right), then the guests seen sharing the cluster.
        long? referrer = await MapsWholeAsync(placement.ReferrerGuestOffset).ConfigureAwait(false) ? placement.ReferrerGuestOffset : null;
        if (referrer is null && _writable.Referrers.Get(host) is { Count: > 0 } known)
        {
            foreach (var candidate in known.ToArray())
            {
                if (await MapsWholeAsync(candidate).ConfigureAwait(false))
                {
                    referrer = candidate;
                    break;
                }
            }
        }

        if (referrer is not long verified)
        {
            return false;
        }

        await refcounts.ChangeAsync(host >> geometry.ClusterBits, +1, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
        _writable.Referrers.Add(host, verified);
        return true;

        // Whether the guest cluster maps all of the host cluster; a sole referrer found so loses COPIED now.
        async ValueTask<bool> MapsWholeAsync(long candidate)
        {
            var (entry, bitmap) = await _writable.Tables.ReadEntryAsync(candidate, async, cancellationToken).ConfigureAwait(false);
            if (entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile) != ClusterType.Normal || entry.HostOffset != host
                || (geometry.ExtendedL2 && bitmap != SubclusterBitmap.AllAllocated))
            {
                return false;
            }

            if (refcount == 1 && entry.IsCopied)
            {
                using var table = await _writable.Tables.GetWritableAsync(candidate, async, cancellationToken).ConfigureAwait(false);
                _writable.Tables.ClearCopiedBeforeSharing(table, candidate, entry, bitmap, newReferrer);
            }

            return true;
        }
    }

    /// <summary>
    /// Points the guest cluster at its new mapping (after the data and refcounts it depends on) and
    /// releases what it pointed at before. Caller holds the metadata lock.
    /// </summary>
    private async ValueTask LinkAsync(ClusterState state, L2Entry entry, SubclusterBitmap bitmap, bool async, CancellationToken cancellationToken)
    {
        var tables = _writable.Tables;
        using (var table = await tables.GetWritableAsync(state.ClusterStart, async, cancellationToken).ConfigureAwait(false))
        {
            var index = _metadata.Geometry.L2Index(state.ClusterStart);
            // The range lock owns the mapping, not COPIED: sharing clears COPIED on a sole referrer
            // (and dropping a share sets it again) under the metadata lock alone, whoever holds that
            // referrer's range. That is safe because nothing relies on a COPIED read earlier: a
            // write goes in place only on a decision taken under the metadata lock, and the cluster
            // cannot be shared from then until the write is done (see InPlaceWrites).
            var current = L2Table.ReadEntry(table.Span, index, _metadata.Geometry.ExtendedL2);
            if (current.WithCopied(false) != state.Entry.WithCopied(false))
            {
                throw new InvalidOperationException($"The L2 entry of guest offset 0x{state.ClusterStart:x} changed during a write that held its range lock.");
            }

            await tables.SetEntryAfterDataAsync(table, state.ClusterStart, entry, bitmap, async, cancellationToken).ConfigureAwait(false); // copied data first
        }

        await ReleaseAsync(state.Entry, state.Type, state.ClusterStart, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Drops the reference an old L2 entry held. When a shared data cluster is left with a single
    /// referrer that the seam tracked, that referrer's COPIED flag is set again.
    /// </summary>
    private async ValueTask ReleaseAsync(L2Entry oldEntry, ClusterType oldType, long guestOffset, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        if (geometry.ExternalDataFile)
        {
            return;
        }

        var refcounts = _writable.Refcounts;
        switch (oldType)
        {
            case ClusterType.Normal:
            case ClusterType.ZeroAllocated:
                var host = oldEntry.HostOffset;
                var remaining = await refcounts.ChangeAsync(host >> geometry.ClusterBits, -1, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                _writable.Referrers.RemoveGuest(host, guestOffset);
                if (remaining == 0 && oldEntry.IsCopied)
                {
                    _writable.Metadata.ReturnWhenDurable(host >> geometry.ClusterBits);
                }
                else if (remaining == 1)
                {
                    await RestoreCopiedAsync(host, async, cancellationToken).ConfigureAwait(false);
                }

                break;
            case ClusterType.Compressed:
                await refcounts.ChangeCompressedAsync(CompressedClusterDescriptor.Decode(oldEntry, geometry.ClusterBits), -1, async, cancellationToken).ConfigureAwait(false);
                _session.Decompressed.Invalidate();
                break;
        }
    }

    /// <summary>Sets COPIED on the one guest cluster still mapping <paramref name="host"/>, if the seam saw who it is.</summary>
    private async ValueTask RestoreCopiedAsync(long host, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var tables = _writable.Tables;
        foreach (var guest in _writable.Referrers.Get(host).ToList())
        {
            var (entry, bitmap) = await tables.ReadEntryAsync(guest, async, cancellationToken).ConfigureAwait(false);
            var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
            if (type is ClusterType.Normal or ClusterType.ZeroAllocated && entry.HostOffset == host)
            {
                if (!entry.IsCopied)
                {
                    using var table = await tables.GetWritableAsync(guest, async, cancellationToken).ConfigureAwait(false);
                    await tables.SetEntryAfterRefcountsAsync(table, guest, entry.WithCopied(true), bitmap, async, cancellationToken).ConfigureAwait(false);
                }

                // Remember the survivor: the allocator may still name a referrer that is gone, and
                // sharing verifies its answer against the guests known here.
                _writable.Referrers.Forget(host);
                _writable.Referrers.Add(host, guest);
                return;
            }

            _writable.Referrers.RemoveGuest(host, guest);
        }

        if (_writable.Allocator.SharesClusters)
        {
            _writable.PendingCopiedFixups.Add(host); // shared before this session: found by a scan at flush
        }
    }
}
