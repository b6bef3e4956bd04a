using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup;

/// <summary>
/// The dedup side of the cluster allocator seam: hashes each full data cluster, answers with an
/// existing host cluster when the index knows one holding the same bytes, indexes fresh clusters,
/// and turns every free or in-place change of a data cluster into an invalidation.
/// </summary>
internal sealed class DedupAllocator(DedupExtension owner) : IClusterAllocator
{
    /// <summary>The <see cref="ClusterPlacement.Tag"/> of a hit to copy into the log store once shared.</summary>
    private const int RefreshTag = 1;

    public bool SharesClusters => true;

    /// <summary>All-zero clusters are never hashed: the image stores them as zero clusters.</summary>
    public ClusterFingerprint? Fingerprint(ReadOnlySpan<byte> cluster) =>
        cluster.ContainsAnyExcept((byte)0) ? ClusterHash.Compute(cluster).Fingerprint : null;

    public ClusterPlacement Place(in ClusterPlacementRequest request)
    {
        if (owner.Index is not { } index || request.Fingerprint is not { } fingerprint)
        {
            return ClusterPlacement.Fresh;
        }

        var hash = ClusterHash.FromFingerprint(fingerprint);

        index.ClustersWritten++;
        if (index.FindUsable(hash, request.Data.Span, out var fromLogStore) is not { } entry)
        {
            return ClusterPlacement.Fresh;
        }

        // Hits from older incarnations, or on entries checked byte for byte, are copied into the log
        // store so that hot contents stay young (and trusted) instead of aging out.
        var refresh = !fromLogStore || entry.Epoch < index.Epoch;
        return ClusterPlacement.Existing(entry.HostOffset, entry.GuestOffset, refresh ? RefreshTag : 0);
    }

    public void OnPlacementResolved(in ClusterPlacementRequest request, ClusterPlacement placement, bool shared)
    {
        if (owner.Index is not { } index || !shared)
        {
            return;
        }

        index.ClustersDeduplicated++;
        if (placement.Tag == RefreshTag && request.Fingerprint is { } fingerprint)
        {
            index.Insert(ClusterHash.FromFingerprint(fingerprint), placement.ExistingHostOffset, placement.ReferrerGuestOffset);
        }
    }

    public void OnStored(in ClusterPlacementRequest request, long hostOffset)
    {
        if (owner.Index is { } index && request.Fingerprint is { } fingerprint)
        {
            index.Insert(ClusterHash.FromFingerprint(fingerprint), hostOffset, request.GuestOffset);
        }
    }

    public void OnFreed(long hostOffset) => owner.Index?.Invalidate(hostOffset);

    /// <summary>
    /// A whole cluster is rewritten out of place (so its new bytes are hashed and may be shared);
    /// a partial rewrite happens in place, after invalidating whatever the index says about the cluster.
    /// </summary>
    public bool AllowOverwriteInPlace(long hostOffset, long guestOffset, bool wholeCluster)
    {
        if (owner.Index is not { State: DedupIndexState.Active } index)
        {
            return true;
        }

        if (wholeCluster)
        {
            return false;
        }

        index.Invalidate(hostOffset);
        return true;
    }
}
