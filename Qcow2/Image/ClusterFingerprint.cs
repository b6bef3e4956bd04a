using System.Buffers.Binary;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// What an <see cref="IClusterAllocator"/> computes about one cluster's bytes outside the image's
/// metadata lock — typically a cryptographic hash such as SHA-256 — carried by value (no boxing)
/// to <see cref="IClusterAllocator.Place"/> and <see cref="IClusterAllocator.OnStored"/>. The
/// image also uses it as the key under which concurrent writes of the same bytes wait for each
/// other, so equal fingerprints must mean equal bytes as far as the allocator is concerned.
/// </summary>
/// <remarks>Holds up to <see cref="MaxLength"/> bytes; a shorter digest is padded with zeros.</remarks>
public readonly struct ClusterFingerprint : IEquatable<ClusterFingerprint>
{
    /// <summary>Bytes a fingerprint holds at most (a SHA-256 digest).</summary>
    public const int MaxLength = 32;

    private readonly ulong _word0;
    private readonly ulong _word1;
    private readonly ulong _word2;
    private readonly ulong _word3;

    /// <summary>A fingerprint of the given digest bytes (at most <see cref="MaxLength"/>).</summary>
    /// <exception cref="ArgumentException">The digest is longer than <see cref="MaxLength"/> bytes.</exception>
    public ClusterFingerprint(ReadOnlySpan<byte> digest)
    {
        if (digest.Length > MaxLength)
        {
            throw new ArgumentException($"A cluster fingerprint holds at most {MaxLength} bytes, not {digest.Length}.", nameof(digest));
        }

        scoped ReadOnlySpan<byte> bytes = digest;
        Span<byte> padded = stackalloc byte[MaxLength];
        if (digest.Length < MaxLength)
        {
            padded.Clear();
            digest.CopyTo(padded);
            bytes = padded;
        }

        _word0 = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        _word1 = BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]);
        _word2 = BinaryPrimitives.ReadUInt64LittleEndian(bytes[16..]);
        _word3 = BinaryPrimitives.ReadUInt64LittleEndian(bytes[24..]);
    }

    /// <summary>A fingerprint from its four little-endian 64-bit words.</summary>
    public ClusterFingerprint(ulong word0, ulong word1, ulong word2, ulong word3)
    {
        _word0 = word0;
        _word1 = word1;
        _word2 = word2;
        _word3 = word3;
    }

    /// <summary>Bytes 0 to 7, little-endian.</summary>
    public ulong Word0 => _word0;

    /// <summary>Bytes 8 to 15, little-endian.</summary>
    public ulong Word1 => _word1;

    /// <summary>Bytes 16 to 23, little-endian.</summary>
    public ulong Word2 => _word2;

    /// <summary>Bytes 24 to 31, little-endian.</summary>
    public ulong Word3 => _word3;

    /// <summary>Writes the <see cref="MaxLength"/> bytes.</summary>
    public void CopyTo(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(destination, _word0);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], _word1);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], _word2);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], _word3);
    }

    /// <inheritdoc />
    public bool Equals(ClusterFingerprint other) => _word0 == other._word0 && _word1 == other._word1 && _word2 == other._word2 && _word3 == other._word3;

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is ClusterFingerprint other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => HashCode.Combine(_word0, _word1, _word2, _word3);

    /// <summary>Whether two fingerprints are equal.</summary>
    public static bool operator ==(ClusterFingerprint left, ClusterFingerprint right) => left.Equals(right);

    /// <summary>Whether two fingerprints differ.</summary>
    public static bool operator !=(ClusterFingerprint left, ClusterFingerprint right) => !left.Equals(right);

    /// <summary>The bytes in hexadecimal.</summary>
    public override string ToString()
    {
        Span<byte> bytes = stackalloc byte[MaxLength];
        CopyTo(bytes);
        return Convert.ToHexStringLower(bytes);
    }
}
