namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The cluster allocator seam (DESIGN §3). Whenever a write needs a host cluster for one whole
/// guest cluster of data — a first write, copy-on-write of a shared or compressed cluster, or a
/// rewrite the allocator did not allow in place — the image asks its allocator where the bytes go.
/// The default answer is "a fresh cluster". An allocator may instead name an existing host
/// cluster that already holds exactly these bytes; the image then increments that cluster's
/// refcount, clears COPIED on its referrers, points the L2 entry at it and skips the data write.
/// </summary>
/// <remarks>
/// <para>Threading: <see cref="Fingerprint"/> runs outside the image's metadata lock and may run on
/// several threads at once. Every other member runs under the metadata lock, one call at a time.</para>
/// <para>Safety: the image verifies every "existing cluster" answer before using it. The cluster
/// must be allocated, below the refcount maximum, and mapped by a guest cluster the image can
/// check (the referrer the allocator names, or one the image saw share it); otherwise the answer
/// is ignored and a fresh cluster is used. The allocator must itself guarantee that the cluster
/// still holds the bytes: <see cref="OnFreed"/> and <see cref="AllowOverwriteInPlace"/> tell it
/// when that could stop being true.</para>
/// <para>One allocator instance serves one image. An allocator that needs to read the image or
/// its refcounts comes with an <see cref="IImageExtension"/>, which receives the
/// <see cref="IImageExtensionHost"/> when the image opens.</para>
/// </remarks>
public interface IClusterAllocator
{
    /// <summary>
    /// Whether this allocator ever answers with existing clusters. Sharing allocators make the
    /// image track which guest clusters share a host cluster, so that COPIED is set again when a
    /// shared cluster drops back to a single referrer.
    /// </summary>
    bool SharesClusters { get; }

    /// <summary>
    /// Computes what <see cref="Place"/> needs to know about a cluster's bytes (typically a hash),
    /// outside the metadata lock. Return null when nothing is needed (the cluster is then placed
    /// fresh without asking <see cref="Place"/> to share it, e.g. an all-zero cluster).
    /// </summary>
    ClusterFingerprint? Fingerprint(ReadOnlySpan<byte> cluster);

    /// <summary>Decides where one full guest cluster of data goes.</summary>
    ClusterPlacement Place(in ClusterPlacementRequest request);

    /// <summary>A fresh cluster now holds <paramref name="request"/>'s bytes and is linked into the L2 table.</summary>
    void OnStored(in ClusterPlacementRequest request, long hostOffset);

    /// <summary>
    /// The answer of <see cref="Place"/> was used (<paramref name="shared"/> true: the existing cluster
    /// gained a reference, or it is the one the guest cluster already maps and nothing was written) or
    /// rejected and replaced by a fresh cluster (then <see cref="OnStored"/> follows).
    /// </summary>
    void OnPlacementResolved(in ClusterPlacementRequest request, ClusterPlacement placement, bool shared);

    /// <summary>A data cluster's refcount reached zero: its bytes may be reused for anything.</summary>
    void OnFreed(long hostOffset);

    /// <summary>
    /// Called before the image writes into data cluster <paramref name="hostOffset"/> in place
    /// (its refcount is 1). Return false to make the image place the new contents elsewhere
    /// through <see cref="Place"/> and free the old cluster instead.
    /// </summary>
    /// <param name="hostOffset">The cluster about to change.</param>
    /// <param name="guestOffset">The guest cluster being written.</param>
    /// <param name="wholeCluster">Whether the write replaces the whole cluster (then placing it anew costs no extra read).</param>
    bool AllowOverwriteInPlace(long hostOffset, long guestOffset, bool wholeCluster);
}

/// <summary>One full guest cluster of data waiting for a host cluster.</summary>
/// <param name="GuestOffset">Guest offset of the cluster (cluster aligned).</param>
/// <param name="Data">The cluster's bytes.</param>
/// <param name="Fingerprint">What <see cref="IClusterAllocator.Fingerprint"/> returned for the bytes.</param>
public readonly record struct ClusterPlacementRequest(long GuestOffset, ReadOnlyMemory<byte> Data, ClusterFingerprint? Fingerprint);

/// <summary>The allocator's answer: a fresh cluster, or an existing one holding the same bytes.</summary>
/// <param name="ExistingHostOffset">Host offset of an existing cluster, or 0 for a fresh one.</param>
/// <param name="ReferrerGuestOffset">A guest cluster that maps <paramref name="ExistingHostOffset"/>, for verification.</param>
/// <param name="Tag">
/// The allocator's own note about this answer (e.g. where it found the cluster), handed back
/// unchanged to <see cref="IClusterAllocator.OnPlacementResolved"/>, so the allocator keeps no
/// state between the two calls. The image ignores it.
/// </param>
public readonly record struct ClusterPlacement(long ExistingHostOffset, long ReferrerGuestOffset, int Tag = 0)
{
    /// <summary>Allocate a fresh cluster.</summary>
    public static ClusterPlacement Fresh => default;

    /// <summary>Whether the answer names an existing cluster.</summary>
    public bool IsExisting => ExistingHostOffset != 0;

    /// <summary>Share an existing cluster that <paramref name="referrerGuestOffset"/> maps (see <see cref="Tag"/>).</summary>
    public static ClusterPlacement Existing(long hostOffset, long referrerGuestOffset, int tag = 0) => new(hostOffset, referrerGuestOffset, tag);
}

/// <summary>The default allocator: every cluster gets a fresh host cluster.</summary>
public sealed class FreshClusterAllocator : IClusterAllocator
{
    /// <summary>The shared stateless instance.</summary>
    public static FreshClusterAllocator Instance { get; } = new();

    /// <inheritdoc />
    public bool SharesClusters => false;

    /// <inheritdoc />
    public ClusterFingerprint? Fingerprint(ReadOnlySpan<byte> cluster) => null;

    /// <inheritdoc />
    public ClusterPlacement Place(in ClusterPlacementRequest request) => ClusterPlacement.Fresh;

    /// <inheritdoc />
    public void OnStored(in ClusterPlacementRequest request, long hostOffset)
    {
    }

    /// <inheritdoc />
    public void OnPlacementResolved(in ClusterPlacementRequest request, ClusterPlacement placement, bool shared)
    {
    }

    /// <inheritdoc />
    public void OnFreed(long hostOffset)
    {
    }

    /// <inheritdoc />
    public bool AllowOverwriteInPlace(long hostOffset, long guestOffset, bool wholeCluster) => true;
}
