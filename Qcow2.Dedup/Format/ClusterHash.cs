using System.Buffers.Binary;
using System.Security.Cryptography;

namespace QcowDedup.Qcow2.Dedup.Format;

/// <summary>
/// The SHA-256 of one cluster's bytes. Its first two 64-bit words pick the two candidate buckets
/// of the cuckoo tables.
/// </summary>
public readonly struct ClusterHash : IEquatable<ClusterHash>
{
    /// <summary>Bytes of a hash.</summary>
    public const int Size = 32;

    private readonly ulong _word0;
    private readonly ulong _word1;
    private readonly ulong _word2;
    private readonly ulong _word3;

    private ClusterHash(ReadOnlySpan<byte> bytes)
    {
        _word0 = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        _word1 = BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]);
        _word2 = BinaryPrimitives.ReadUInt64LittleEndian(bytes[16..]);
        _word3 = BinaryPrimitives.ReadUInt64LittleEndian(bytes[24..]);
    }

    /// <summary>First word: source of the first bucket index.</summary>
    public ulong Word0 => _word0;

    /// <summary>Second word: source of the second bucket index.</summary>
    public ulong Word1 => _word1;

    /// <summary>Hashes a cluster with the BCL's SHA-256.</summary>
    public static ClusterHash Compute(ReadOnlySpan<byte> cluster)
    {
        Span<byte> digest = stackalloc byte[Size];
        SHA256.HashData(cluster, digest);
        return new ClusterHash(digest);
    }

    /// <summary>Reads a stored hash.</summary>
    public static ClusterHash Read(ReadOnlySpan<byte> bytes) => new(bytes);

    /// <summary>Writes the hash's 32 bytes.</summary>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(destination, _word0);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], _word1);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], _word2);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], _word3);
    }

    /// <inheritdoc />
    public bool Equals(ClusterHash other) => _word0 == other._word0 && _word1 == other._word1 && _word2 == other._word2 && _word3 == other._word3;

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is ClusterHash other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => (int)_word2;

    /// <summary>Equality.</summary>
    public static bool operator ==(ClusterHash left, ClusterHash right) => left.Equals(right);

    /// <summary>Inequality.</summary>
    public static bool operator !=(ClusterHash left, ClusterHash right) => !left.Equals(right);

    /// <inheritdoc />
    public override string ToString()
    {
        Span<byte> bytes = stackalloc byte[Size];
        Write(bytes);
        return Convert.ToHexStringLower(bytes);
    }
}
