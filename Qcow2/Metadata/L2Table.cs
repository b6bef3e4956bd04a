using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>Reads and writes entries of an L2 table held in a buffer (standard or extended).</summary>
internal static class L2Table
{
    public static L2Entry ReadEntry(ReadOnlySpan<byte> table, int index, bool extended) =>
        new(BinaryPrimitives.ReadUInt64BigEndian(table[(index << (extended ? 4 : 3))..]));

    public static SubclusterBitmap ReadBitmap(ReadOnlySpan<byte> table, int index, bool extended) =>
        extended ? new SubclusterBitmap(BinaryPrimitives.ReadUInt64BigEndian(table[((index << 4) + 8)..])) : default;

    public static void WriteEntry(Span<byte> table, int index, bool extended, L2Entry entry) =>
        BinaryPrimitives.WriteUInt64BigEndian(table[(index << (extended ? 4 : 3))..], entry.Raw);

    public static void WriteBitmap(Span<byte> table, int index, SubclusterBitmap bitmap) =>
        BinaryPrimitives.WriteUInt64BigEndian(table[((index << 4) + 8)..], bitmap.Raw);
}
