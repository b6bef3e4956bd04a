using System.Security.Cryptography;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup.Format;

/// <summary>
/// The SHA-256 of one cluster's bytes: the <see cref="ClusterFingerprint"/> the dedup allocator
/// gives the image. Its first two 64-bit words pick the two candidate buckets of the cuckoo tables.
/// </summary>
public readonly struct ClusterHash : IEquatable<ClusterHash>
{
    /// <summary>Bytes of a hash.</summary>
    public const int Size = ClusterFingerprint.MaxLength;

    private ClusterHash(ClusterFingerprint value) => Fingerprint = value;

    /// <summary>The hash as the image carries it.</summary>
    public ClusterFingerprint Fingerprint { get; }

    /// <summary>First word: source of the first bucket index.</summary>
    public ulong Word0 => Fingerprint.Word0;

    /// <summary>Second word: source of the second bucket index.</summary>
    public ulong Word1 => Fingerprint.Word1;

    /// <summary>Hashes a cluster with the BCL's SHA-256.</summary>
    public static ClusterHash Compute(ReadOnlySpan<byte> cluster)
    {
        Span<byte> digest = stackalloc byte[Size];
        SHA256.HashData(cluster, digest);
        return Read(digest);
    }

    /// <summary>Reads a stored hash.</summary>
    public static ClusterHash Read(ReadOnlySpan<byte> bytes) => new(new ClusterFingerprint(bytes[..Size]));

    /// <summary>The hash a fingerprint computed by <see cref="Compute"/> carries.</summary>
    public static ClusterHash FromFingerprint(ClusterFingerprint fingerprint) => new(fingerprint);

    /// <summary>Writes the hash's 32 bytes.</summary>
    public void Write(Span<byte> destination) => Fingerprint.CopyTo(destination);

    /// <inheritdoc />
    public bool Equals(ClusterHash other) => Fingerprint.Equals(other.Fingerprint);

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is ClusterHash other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => (int)Fingerprint.Word2;

    /// <summary>Equality.</summary>
    public static bool operator ==(ClusterHash left, ClusterHash right) => left.Equals(right);

    /// <summary>Inequality.</summary>
    public static bool operator !=(ClusterHash left, ClusterHash right) => !left.Equals(right);

    /// <inheritdoc />
    public override string ToString() => Fingerprint.ToString();
}
