using System.Buffers.Binary;

namespace QcowDedup.Qcow2.Format;

/// <summary>
/// Reads and writes refcount entries of every width (1–64 bits) inside a refcount block. Entries
/// narrower than a byte are packed from the least significant bit: entry i sits at bit
/// (i mod (8/w))·w of byte i/(8/w), as QEMU packs them. Wider entries are big-endian.
/// </summary>
public static class RefcountBlock
{
    /// <summary>Entries in one refcount block.</summary>
    public static int EntriesPerBlock(int clusterBits, int refcountOrder) => 1 << (clusterBits + 3 - refcountOrder);

    /// <summary>Largest refcount the width can hold.</summary>
    public static ulong MaxRefcount(int refcountOrder) => refcountOrder == 6 ? ulong.MaxValue : (1UL << (1 << refcountOrder)) - 1;

    /// <summary>Reads entry <paramref name="index"/>.</summary>
    public static ulong Get(ReadOnlySpan<byte> block, int index, int refcountOrder)
    {
        switch (refcountOrder)
        {
            case 0:
            case 1:
            case 2:
                var bits = 1 << refcountOrder;
                var perByte = 8 / bits;
                var shift = index % perByte * bits;
                return (ulong)((block[index / perByte] >> shift) & ((1 << bits) - 1));
            case 3:
                return block[index];
            case 4:
                return BinaryPrimitives.ReadUInt16BigEndian(block[(index * 2)..]);
            case 5:
                return BinaryPrimitives.ReadUInt32BigEndian(block[(index * 4)..]);
            case 6:
                return BinaryPrimitives.ReadUInt64BigEndian(block[(index * 8)..]);
            default:
                throw new ArgumentOutOfRangeException(nameof(refcountOrder), refcountOrder, "refcount_order must be 0..6.");
        }
    }

    /// <summary>Writes entry <paramref name="index"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value does not fit the width.</exception>
    public static void Set(Span<byte> block, int index, int refcountOrder, ulong value)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(value, MaxRefcount(refcountOrder));
        switch (refcountOrder)
        {
            case 0:
            case 1:
            case 2:
                var bits = 1 << refcountOrder;
                var perByte = 8 / bits;
                var shift = index % perByte * bits;
                var mask = ((1 << bits) - 1) << shift;
                ref var target = ref block[index / perByte];
                target = (byte)((target & ~mask) | ((int)value << shift));
                break;
            case 3:
                block[index] = (byte)value;
                break;
            case 4:
                BinaryPrimitives.WriteUInt16BigEndian(block[(index * 2)..], (ushort)value);
                break;
            case 5:
                BinaryPrimitives.WriteUInt32BigEndian(block[(index * 4)..], (uint)value);
                break;
            case 6:
                BinaryPrimitives.WriteUInt64BigEndian(block[(index * 8)..], value);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(refcountOrder), refcountOrder, "refcount_order must be 0..6.");
        }
    }
}
