using System.Buffers.Binary;
using System.Text;

namespace QcowDedup.Qcow2.Format;

/// <summary>
/// One internal snapshot (spec "Snapshots"): a 40-byte fixed part, extra data (64-bit VM state
/// size, disk size, instruction count), the id and name strings, padded to 8 bytes.
/// </summary>
public sealed record SnapshotTableEntry
{
    /// <summary>Bytes of the fixed part.</summary>
    public const int FixedSize = 40;

    /// <summary>Extra data QEMU writes for v3 images (VM state size, disk size, icount).</summary>
    public const int StandardExtraDataSize = 24;

    /// <summary>Extra data v3 images must carry at least (VM state size and disk size).</summary>
    public const int MinimumV3ExtraDataSize = 16;

    /// <summary>Host offset of the snapshot's L1 table.</summary>
    public required long L1TableOffset { get; init; }

    /// <summary>Entries in the snapshot's L1 table.</summary>
    public required int L1Size { get; init; }

    /// <summary>Unique id string (QEMU uses decimal numbers).</summary>
    public required string Id { get; init; }

    /// <summary>Snapshot name.</summary>
    public required string Name { get; init; }

    /// <summary>Creation time, seconds since the epoch.</summary>
    public uint DateSeconds { get; init; }

    /// <summary>Creation time, nanoseconds part.</summary>
    public uint DateNanoseconds { get; init; }

    /// <summary>Guest run time when taken, in nanoseconds.</summary>
    public ulong VmClockNanoseconds { get; init; }

    /// <summary>Size of the saved VM state (0 without one); the 64-bit extra field wins when present.</summary>
    public long VmStateSize { get; init; }

    /// <summary>Virtual disk size when the snapshot was taken, or null when the entry does not record it.</summary>
    public long? DiskSize { get; init; }

    /// <summary>Instruction count (-1 when icount was off), or null when not recorded.</summary>
    public long? InstructionCount { get; init; }

    /// <summary>Extra data beyond the fields this library knows, kept verbatim.</summary>
    public ReadOnlyMemory<byte> UnknownExtraData { get; init; }

    /// <summary>Creation time.</summary>
    public DateTimeOffset Date => DateTimeOffset.FromUnixTimeSeconds(DateSeconds).AddTicks(DateNanoseconds / 100);

    /// <summary>Bytes this entry occupies in the table.</summary>
    public int StoredLength => Align8(FixedSize + ExtraDataLength + Encoding.UTF8.GetByteCount(Id) + Encoding.UTF8.GetByteCount(Name));

    private int ExtraDataLength => (InstructionCount is null ? (DiskSize is null ? 8 : 16) : StandardExtraDataSize) + UnknownExtraData.Length;

    /// <summary>
    /// Decodes the entry at the start of <paramref name="data"/>. Returns false when more bytes are
    /// needed; <paramref name="consumed"/> then tells how many the entry needs at least.
    /// </summary>
    /// <exception cref="InvalidDataException">The entry's sizes break QEMU's limits.</exception>
    public static bool TryParse(ReadOnlySpan<byte> data, long hostOffset, out SnapshotTableEntry? entry, out int consumed)
    {
        entry = null;
        consumed = FixedSize;
        if (data.Length < FixedSize)
        {
            return false;
        }

        var l1Offset = BinaryPrimitives.ReadUInt64BigEndian(data);
        var l1Size = BinaryPrimitives.ReadUInt32BigEndian(data[8..]);
        var idSize = BinaryPrimitives.ReadUInt16BigEndian(data[12..]);
        var nameSize = BinaryPrimitives.ReadUInt16BigEndian(data[14..]);
        var extraSize = BinaryPrimitives.ReadUInt32BigEndian(data[36..]);
        if (extraSize > Qcow2Layout.MaxSnapshotExtraDataSize)
        {
            throw Qcow2Corruption.Create("snapshot table entry", $"extra data of {extraSize} bytes exceeds QEMU's limit of {Qcow2Layout.MaxSnapshotExtraDataSize}", hostOffset);
        }

        if (l1Offset > long.MaxValue || l1Size > int.MaxValue)
        {
            throw Qcow2Corruption.Create("snapshot table entry", $"L1 table of {l1Size} entries at 0x{l1Offset:x} is out of range", hostOffset);
        }

        consumed = Align8(FixedSize + (int)extraSize + idSize + nameSize);
        if (data.Length < FixedSize + (int)extraSize + idSize + nameSize)
        {
            return false;
        }

        var extra = data.Slice(FixedSize, (int)extraSize);
        var vmState = (long)BinaryPrimitives.ReadUInt32BigEndian(data[32..]);
        if (extra.Length >= 8)
        {
            vmState = (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(extra), long.MaxValue);
        }

        long? diskSize = extra.Length >= 16 ? (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(extra[8..]), long.MaxValue) : null;
        long? icount = extra.Length >= 24 ? (long)BinaryPrimitives.ReadUInt64BigEndian(extra[16..]) : null;
        var strings = data[(FixedSize + (int)extraSize)..];
        entry = new SnapshotTableEntry
        {
            L1TableOffset = (long)l1Offset,
            L1Size = (int)l1Size,
            Id = Encoding.UTF8.GetString(strings[..idSize]),
            Name = Encoding.UTF8.GetString(strings.Slice(idSize, nameSize)),
            DateSeconds = BinaryPrimitives.ReadUInt32BigEndian(data[16..]),
            DateNanoseconds = BinaryPrimitives.ReadUInt32BigEndian(data[20..]),
            VmClockNanoseconds = BinaryPrimitives.ReadUInt64BigEndian(data[24..]),
            VmStateSize = vmState,
            DiskSize = diskSize,
            InstructionCount = icount,
            UnknownExtraData = extra.Length > StandardExtraDataSize ? extra[StandardExtraDataSize..].ToArray() : ReadOnlyMemory<byte>.Empty,
        };
        return true;
    }

    /// <summary>Encodes the entry (with QEMU's standard extra data) and returns the bytes written.</summary>
    public int Write(Span<byte> destination)
    {
        var id = Encoding.UTF8.GetBytes(Id);
        var name = Encoding.UTF8.GetBytes(Name);
        var extraSize = ExtraDataLength;
        var length = StoredLength;
        destination[..length].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(destination, (ulong)L1TableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], (uint)L1Size);
        BinaryPrimitives.WriteUInt16BigEndian(destination[12..], checked((ushort)id.Length));
        BinaryPrimitives.WriteUInt16BigEndian(destination[14..], checked((ushort)name.Length));
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], DateSeconds);
        BinaryPrimitives.WriteUInt32BigEndian(destination[20..], DateNanoseconds);
        BinaryPrimitives.WriteUInt64BigEndian(destination[24..], VmClockNanoseconds);
        BinaryPrimitives.WriteUInt32BigEndian(destination[32..], VmStateSize > uint.MaxValue ? 0 : (uint)VmStateSize);
        BinaryPrimitives.WriteUInt32BigEndian(destination[36..], (uint)extraSize);
        var extra = destination.Slice(FixedSize, extraSize);
        BinaryPrimitives.WriteUInt64BigEndian(extra, (ulong)VmStateSize);
        if (DiskSize is long disk)
        {
            BinaryPrimitives.WriteUInt64BigEndian(extra[8..], (ulong)disk);
        }

        if (InstructionCount is long icount)
        {
            BinaryPrimitives.WriteUInt64BigEndian(extra[16..], (ulong)icount);
            UnknownExtraData.Span.CopyTo(extra[StandardExtraDataSize..]);
        }

        id.CopyTo(destination[(FixedSize + extraSize)..]);
        name.CopyTo(destination[(FixedSize + extraSize + id.Length)..]);
        return length;
    }

    private static int Align8(int length) => (length + 7) & ~7;
}
