using System.Buffers.Binary;
using QcowDedup.Qcow2.Dedup.Stores;

namespace QcowDedup.Qcow2.Dedup.Format;

/// <summary>One record of the incarnation list: a live incarnation or a limbo area awaiting reuse.</summary>
internal readonly record struct IncarnationRecord(bool Live, int Order, uint Generation, long Offset, long Bytes, long Entries, long FirstSequence, long EndSequence);

/// <summary>
/// The incarnation list (48-byte records after an 8-byte count + CRC), kept in two slots written
/// alternately so the header always names a complete list.
/// </summary>
internal static class IncarnationList
{
    public const int RecordSize = 48;
    private const int HeaderSize = 8;

    /// <summary>Bytes a list slot needs for <paramref name="maxIncarnations"/> live and as many limbo records.</summary>
    public static int SlotBytes(int maxIncarnations) =>
        (int)((HeaderSize + ((2L * maxIncarnations + 8) * RecordSize) + 4095) / 4096 * 4096);

    public static byte[] Encode(IReadOnlyList<IncarnationRecord> records, int slotBytes)
    {
        var bytes = new byte[slotBytes];
        if (HeaderSize + (records.Count * RecordSize) > slotBytes)
        {
            throw new InvalidOperationException($"{records.Count} incarnation records do not fit a {slotBytes}-byte list.");
        }

        for (var i = 0; i < records.Count; i++)
        {
            var span = bytes.AsSpan(HeaderSize + (i * RecordSize), RecordSize);
            var record = records[i];
            span[0] = record.Live ? (byte)1 : (byte)2;
            span[1] = (byte)record.Order;
            BinaryPrimitives.WriteUInt32BigEndian(span[4..], record.Generation);
            BinaryPrimitives.WriteInt64BigEndian(span[8..], record.Offset);
            BinaryPrimitives.WriteInt64BigEndian(span[16..], record.Bytes);
            BinaryPrimitives.WriteInt64BigEndian(span[24..], record.Entries);
            BinaryPrimitives.WriteInt64BigEndian(span[32..], record.FirstSequence);
            BinaryPrimitives.WriteInt64BigEndian(span[40..], record.EndSequence);
        }

        BinaryPrimitives.WriteInt32BigEndian(bytes, records.Count);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(4), Crc32C.Compute(bytes.AsSpan(HeaderSize, records.Count * RecordSize)));
        return bytes;
    }

    /// <summary>Decodes a list; null when its count or CRC is wrong or a record is implausible.</summary>
    public static List<IncarnationRecord>? TryDecode(ReadOnlySpan<byte> bytes, int clusterSize, int maxIncarnations, int maxOrder)
    {
        var count = BinaryPrimitives.ReadInt32BigEndian(bytes);
        if (count < 0 || count > (2 * maxIncarnations) + 8 || HeaderSize + ((long)count * RecordSize) > bytes.Length
            || BinaryPrimitives.ReadUInt32BigEndian(bytes[4..]) != Crc32C.Compute(bytes.Slice(HeaderSize, count * RecordSize)))
        {
            return null;
        }

        var records = new List<IncarnationRecord>(count);
        for (var i = 0; i < count; i++)
        {
            var span = bytes.Slice(HeaderSize + (i * RecordSize), RecordSize);
            var record = new IncarnationRecord(
                span[0] == 1,
                span[1],
                BinaryPrimitives.ReadUInt32BigEndian(span[4..]),
                BinaryPrimitives.ReadInt64BigEndian(span[8..]),
                BinaryPrimitives.ReadInt64BigEndian(span[16..]),
                BinaryPrimitives.ReadInt64BigEndian(span[24..]),
                BinaryPrimitives.ReadInt64BigEndian(span[32..]),
                BinaryPrimitives.ReadInt64BigEndian(span[40..]));
            if (span[0] is not (1 or 2) || record.Order < 1 || record.Order > maxOrder || record.Offset <= 0 || record.Offset % clusterSize != 0
                || record.Bytes != Incarnation.AreaBytes(record.Order) || record.Entries < 0 || record.Entries > 4L << record.Order)
            {
                return null;
            }

            records.Add(record);
        }

        return records;
    }
}
