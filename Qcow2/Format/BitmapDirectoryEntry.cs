using System.Buffers.Binary;
using System.Text;

namespace QcowDedup.Qcow2.Format;

/// <summary>Flags of a bitmap directory entry.</summary>
[Flags]
public enum BitmapFlags : uint
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary>Bit 0: the bitmap was not saved correctly and may be inconsistent.</summary>
    InUse = 1u << 0,

    /// <summary>Bit 1: QEMU tracks writes into this bitmap automatically.</summary>
    Auto = 1u << 1,

    /// <summary>Bit 2: unknown extra data may be ignored.</summary>
    ExtraDataCompatible = 1u << 2,
}

/// <summary>One entry of the bitmap directory (spec "Bitmap directory").</summary>
public sealed record BitmapDirectoryEntry
{
    /// <summary>Bytes of the fixed part.</summary>
    public const int FixedSize = 24;

    /// <summary>Host offset of the bitmap table.</summary>
    public required long TableOffset { get; init; }

    /// <summary>Entries in the bitmap table.</summary>
    public required int TableSize { get; init; }

    /// <summary>Flags.</summary>
    public BitmapFlags Flags { get; init; }

    /// <summary>Bitmap type (1 = dirty tracking).</summary>
    public byte Type { get; init; } = 1;

    /// <summary>log2 of the guest bytes one bit covers.</summary>
    public int GranularityBits { get; init; }

    /// <summary>Bitmap name.</summary>
    public required string Name { get; init; }

    /// <summary>Extra data, kept verbatim.</summary>
    public ReadOnlyMemory<byte> ExtraData { get; init; }

    /// <summary>Bytes the entry occupies in the directory (padded to 8).</summary>
    public int StoredLength => (FixedSize + ExtraData.Length + System.Text.Encoding.UTF8.GetByteCount(Name) + 7) & ~7;

    /// <summary>Offset of the flags field inside an entry.</summary>
    public const int FlagsOffset = 12;

    /// <summary>Guest bytes one bit covers.</summary>
    public long Granularity => GranularityBits < 63 ? 1L << GranularityBits : long.MaxValue;

    /// <summary>QEMU's BME_MAX_TABLE_SIZE: more table entries than any bitmap can need.</summary>
    public const int MaxTableSize = 0x8000000;

    /// <summary>QEMU's BME_MAX_PHYS_SIZE: the most bytes a bitmap's data may take in the image.</summary>
    public const long MaxPhysicalSize = 0x20000000;

    /// <summary>Decodes all <paramref name="count"/> entries of a directory.</summary>
    /// <exception cref="InvalidDataException">An entry does not fit the directory or breaks the spec's limits.</exception>
    public static IReadOnlyList<BitmapDirectoryEntry> ParseDirectory(ReadOnlySpan<byte> directory, int count, long hostOffset)
    {
        var entries = new List<BitmapDirectoryEntry>(Math.Min(count, 1024));
        var offset = 0;
        for (var i = 0; i < count; i++)
        {
            if (directory.Length - offset < FixedSize)
            {
                throw Qcow2Corruption.Create("bitmap directory", $"entry {i} extends past the directory's {directory.Length} bytes", hostOffset + offset);
            }

            var entry = directory[offset..];
            var tableOffset = BinaryPrimitives.ReadUInt64BigEndian(entry);
            var tableSize = BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            var flags = BinaryPrimitives.ReadUInt32BigEndian(entry[12..]);
            var nameSize = BinaryPrimitives.ReadUInt16BigEndian(entry[18..]);
            var extraSize = BinaryPrimitives.ReadUInt32BigEndian(entry[20..]);
            if (nameSize == 0 || extraSize > int.MaxValue / 2 || tableOffset > long.MaxValue || tableSize > MaxTableSize)
            {
                throw Qcow2Corruption.Create("bitmap directory", $"entry {i} has an invalid name size, extra data size or table", hostOffset + offset);
            }

            var length = (FixedSize + (int)extraSize + nameSize + 7) & ~7;
            if (directory.Length - offset < FixedSize + (int)extraSize + nameSize)
            {
                throw Qcow2Corruption.Create("bitmap directory", $"entry {i} extends past the directory's {directory.Length} bytes", hostOffset + offset);
            }

            entries.Add(new BitmapDirectoryEntry
            {
                TableOffset = (long)tableOffset,
                TableSize = (int)tableSize,
                Flags = (BitmapFlags)flags,
                Type = entry[16],
                GranularityBits = entry[17],
                ExtraData = entry.Slice(FixedSize, (int)extraSize).ToArray(),
                Name = Encoding.UTF8.GetString(entry.Slice(FixedSize + (int)extraSize, nameSize)),
            });
            offset += Math.Min(length, directory.Length - offset);
        }

        return entries;
    }

    /// <summary>Encodes entries as a directory (each padded to 8 bytes, extra data kept).</summary>
    public static byte[] SerializeDirectory(IReadOnlyList<BitmapDirectoryEntry> entries)
    {
        var bytes = new byte[entries.Sum(e => (long)e.StoredLength)];
        var offset = 0;
        foreach (var entry in entries)
        {
            var span = bytes.AsSpan(offset);
            var name = Encoding.UTF8.GetBytes(entry.Name);
            BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)entry.TableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(span[8..], (uint)entry.TableSize);
            BinaryPrimitives.WriteUInt32BigEndian(span[12..], (uint)entry.Flags);
            span[16] = entry.Type;
            span[17] = (byte)entry.GranularityBits;
            BinaryPrimitives.WriteUInt16BigEndian(span[18..], (ushort)name.Length);
            BinaryPrimitives.WriteUInt32BigEndian(span[20..], (uint)entry.ExtraData.Length);
            entry.ExtraData.Span.CopyTo(span[FixedSize..]);
            name.CopyTo(span[(FixedSize + entry.ExtraData.Length)..]);
            offset += entry.StoredLength;
        }

        return bytes;
    }

    /// <summary>
    /// Why QEMU would refuse to load this entry of an image of <paramref name="diskSize"/> bytes
    /// (check_dir_entry, and its refusal of extra data), or null when it loads.
    /// </summary>
    public string? Problem(long clusterSize, long diskSize)
    {
        var physical = (long)TableSize * clusterSize;
        return TableSize == 0 || TableOffset == 0 || TableOffset % clusterSize != 0 ? "its bitmap table is missing or unaligned"
            : TableSize > MaxTableSize || physical > MaxPhysicalSize ? $"its table of {TableSize} entries is larger than QEMU's limit"
            : GranularityBits is < BitmapLimits.MinGranularityBits or > BitmapLimits.MaxGranularityBits ? $"its granularity 2^{GranularityBits} is outside 512 B..2 GiB"
            : ((uint)Flags & ~(uint)(BitmapFlags.InUse | BitmapFlags.Auto)) != 0 ? $"it has unknown flags 0x{(uint)Flags:x}"
            : Type != 1 ? $"its type {Type} is not a dirty-tracking bitmap"
            : !ExtraData.IsEmpty ? "it carries extra data, which QEMU does not support"
            : Encoding.UTF8.GetByteCount(Name) > BitmapLimits.MaxNameBytes ? "its name is longer than 1023 bytes"
            : (Flags & BitmapFlags.InUse) == 0 && TableSize != BitmapLimits.TableEntries(diskSize, GranularityBits, System.Numerics.BitOperations.Log2((ulong)clusterSize))
                ? $"its table of {TableSize} entries does not fit the {diskSize}-byte disk"
            : null;
    }
}
