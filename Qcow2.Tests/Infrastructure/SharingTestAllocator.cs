using System.Security.Cryptography;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>
/// A minimal sharing allocator for testing the seam: clusters with identical bytes share one host
/// cluster. It forgets a host cluster when it is freed or about to be overwritten in place, and
/// records every call so tests can check the contract.
/// </summary>
public sealed class SharingTestAllocator : IClusterAllocator
{
    private readonly Dictionary<ClusterFingerprint, (long Host, long Guest)> _byContent = [];

    /// <summary>Whether in-place overwrites are allowed (false: the image must place rewrites elsewhere).</summary>
    public bool AllowInPlace { get; set; } = true;

    /// <summary>When set, every placement answers this (to test that the image rejects bad answers).</summary>
    public ClusterPlacement? ForcedAnswer { get; set; }

    public List<long> Freed { get; } = [];

    public List<(long Host, long Guest)> InPlaceRequests { get; } = [];

    public List<(ClusterPlacement Placement, bool Shared)> Resolutions { get; } = [];

    /// <summary>The tag every hit carries, which the image must hand back unchanged.</summary>
    public const int HitTag = 7;

    public bool SharesClusters => true;

    public ClusterFingerprint? Fingerprint(ReadOnlySpan<byte> cluster) => new ClusterFingerprint(SHA256.HashData(cluster));

    public ClusterPlacement Place(in ClusterPlacementRequest request)
    {
        if (ForcedAnswer is { } forced)
        {
            return forced;
        }

        return request.Fingerprint is { } hash && _byContent.TryGetValue(hash, out var known)
            ? ClusterPlacement.Existing(known.Host, known.Guest, HitTag)
            : ClusterPlacement.Fresh;
    }

    public void OnStored(in ClusterPlacementRequest request, long hostOffset)
    {
        if (request.Fingerprint is { } hash)
        {
            _byContent[hash] = (hostOffset, request.GuestOffset);
        }
    }

    public void OnPlacementResolved(in ClusterPlacementRequest request, ClusterPlacement placement, bool shared) =>
        Resolutions.Add((placement, shared));

    public void OnFreed(long hostOffset)
    {
        Freed.Add(hostOffset);
        Forget(hostOffset);
    }

    public bool AllowOverwriteInPlace(long hostOffset, long guestOffset, bool wholeCluster)
    {
        InPlaceRequests.Add((hostOffset, guestOffset));
        if (AllowInPlace)
        {
            Forget(hostOffset); // its bytes are about to change
        }

        return AllowInPlace;
    }

    private void Forget(long hostOffset)
    {
        foreach (var key in _byContent.Where(e => e.Value.Host == hostOffset).Select(e => e.Key).ToList())
        {
            _byContent.Remove(key);
        }
    }
}
