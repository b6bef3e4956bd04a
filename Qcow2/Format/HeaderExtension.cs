using System.Buffers.Binary;
using System.Text;

namespace QcowDedup.Qcow2.Format;

/// <summary>Magic numbers of the header extensions the spec defines.</summary>
public static class HeaderExtensionType
{
    /// <summary>Marks the end of the extension area.</summary>
    public const uint End = 0x00000000;

    /// <summary>Backing file format name, e.g. "qcow2" or "raw".</summary>
    public const uint BackingFormat = 0xE2792ACA;

    /// <summary>Names of feature bits.</summary>
    public const uint FeatureNameTable = 0x6803F857;

    /// <summary>Persistent dirty bitmaps directory pointer.</summary>
    public const uint Bitmaps = 0x23852875;

    /// <summary>Pointer to the LUKS header.</summary>
    public const uint FullDiskEncryption = 0x0537BE77;

    /// <summary>External data file name ("DATA").</summary>
    public const uint ExternalDataFile = 0x44415441;

    /// <summary>Whether the core library interprets this extension type itself.</summary>
    public static bool IsKnown(uint type) => type is BackingFormat or FeatureNameTable or Bitmaps or FullDiskEncryption or ExternalDataFile;
}

/// <summary>One header extension record as stored: its type and payload (without padding).</summary>
/// <param name="Type">The extension's magic number.</param>
/// <param name="Data">The payload bytes.</param>
public sealed record HeaderExtension(uint Type, ReadOnlyMemory<byte> Data)
{
    /// <summary>Bytes the record occupies in cluster 0: 8-byte record header plus payload padded to 8.</summary>
    public int StoredLength => 8 + Align8(Data.Length);

    internal static int Align8(int length) => (length + 7) & ~7;
}

/// <summary>One entry of the feature name table (48 bytes on disk).</summary>
/// <param name="Kind">Which feature field the bit belongs to.</param>
/// <param name="Bit">Bit number, 0..63.</param>
/// <param name="Name">Human readable name, at most 46 bytes of UTF-8.</param>
public sealed record FeatureName(FeatureKind Kind, int Bit, string Name)
{
    /// <summary>Size of one table entry.</summary>
    public const int EntrySize = 48;

    private const int NameSize = EntrySize - 2;

    /// <summary>The eight names QEMU 7.2 writes into the feature name table, in QEMU's order.</summary>
    public static IReadOnlyList<FeatureName> Standard { get; } =
    [
        new(FeatureKind.Incompatible, 0, "dirty bit"),
        new(FeatureKind.Incompatible, 1, "corrupt bit"),
        new(FeatureKind.Incompatible, 2, "external data file"),
        new(FeatureKind.Incompatible, 3, "compression type"),
        new(FeatureKind.Incompatible, 4, "extended L2 entries"),
        new(FeatureKind.Compatible, 0, "lazy refcounts"),
        new(FeatureKind.Autoclear, 0, "bitmaps"),
        new(FeatureKind.Autoclear, 1, "raw external data"),
    ];

    /// <summary>Decodes every whole entry of a feature name table payload.</summary>
    public static IReadOnlyList<FeatureName> ParseTable(ReadOnlySpan<byte> payload)
    {
        var names = new List<FeatureName>(payload.Length / EntrySize);
        for (var offset = 0; offset + EntrySize <= payload.Length; offset += EntrySize)
        {
            var entry = payload.Slice(offset, EntrySize);
            var name = entry.Slice(2, NameSize);
            var end = name.IndexOf((byte)0);
            names.Add(new FeatureName((FeatureKind)entry[0], entry[1], Encoding.UTF8.GetString(end < 0 ? name : name[..end])));
        }

        return names;
    }

    /// <summary>Encodes a feature name table payload.</summary>
    public static byte[] EncodeTable(IReadOnlyList<FeatureName> names)
    {
        var payload = new byte[names.Count * EntrySize];
        for (var i = 0; i < names.Count; i++)
        {
            var entry = payload.AsSpan(i * EntrySize, EntrySize);
            entry[0] = (byte)names[i].Kind;
            entry[1] = (byte)names[i].Bit;
            var written = Encoding.UTF8.GetBytes(names[i].Name.AsSpan(), entry[2..]);
            _ = written;
        }

        return payload;
    }
}

/// <summary>Payload of the bitmaps extension (24 bytes).</summary>
/// <param name="BitmapCount">Number of bitmaps in the directory.</param>
/// <param name="DirectorySize">Size of the bitmap directory in bytes.</param>
/// <param name="DirectoryOffset">Host offset of the bitmap directory.</param>
public sealed record BitmapsExtension(int BitmapCount, long DirectorySize, long DirectoryOffset)
{
    /// <summary>Exact payload length.</summary>
    public const int Length = 24;

    /// <summary>QEMU's limit on the number of bitmaps.</summary>
    public const int MaxBitmaps = 65535;

    /// <summary>QEMU's limit on the directory size (1024 bytes per bitmap).</summary>
    public const long MaxDirectorySize = 1024L * MaxBitmaps;

    /// <summary>Decodes and checks the payload.</summary>
    public static BitmapsExtension Parse(ReadOnlySpan<byte> payload, long extensionOffset)
    {
        if (payload.Length != Length)
        {
            throw Qcow2Corruption.Create("bitmaps extension", $"length is {payload.Length}, not {Length}", extensionOffset);
        }

        var count = BinaryPrimitives.ReadUInt32BigEndian(payload);
        var reserved = BinaryPrimitives.ReadUInt32BigEndian(payload[4..]);
        var size = BinaryPrimitives.ReadUInt64BigEndian(payload[8..]);
        var offset = BinaryPrimitives.ReadUInt64BigEndian(payload[16..]);
        if (reserved != 0)
        {
            throw Qcow2Corruption.Create("bitmaps extension", "reserved field is not zero", extensionOffset);
        }

        if (count is 0 or > MaxBitmaps)
        {
            throw Qcow2Corruption.Create("bitmaps extension", $"nb_bitmaps {count} is outside 1..{MaxBitmaps}", extensionOffset);
        }

        if (size > MaxDirectorySize || offset > long.MaxValue)
        {
            throw Qcow2Corruption.Create("bitmaps extension", $"bitmap directory of {size} bytes at 0x{offset:x} is out of range", extensionOffset);
        }

        return new BitmapsExtension((int)count, (long)size, (long)offset);
    }

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var payload = new byte[Length];
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)BitmapCount);
        BinaryPrimitives.WriteUInt64BigEndian(payload.AsSpan(8), (ulong)DirectorySize);
        BinaryPrimitives.WriteUInt64BigEndian(payload.AsSpan(16), (ulong)DirectoryOffset);
        return payload;
    }
}

/// <summary>Payload of the full disk encryption header pointer extension (16 bytes).</summary>
/// <param name="Offset">Host offset of the LUKS header area (cluster aligned).</param>
/// <param name="Length">Length of the LUKS header area in bytes.</param>
public sealed record FullDiskEncryptionPointer(long Offset, long Length)
{
    /// <summary>Exact payload length.</summary>
    public const int PayloadLength = 16;

    /// <summary>Decodes and checks the payload.</summary>
    public static FullDiskEncryptionPointer Parse(ReadOnlySpan<byte> payload, long extensionOffset)
    {
        if (payload.Length != PayloadLength)
        {
            throw Qcow2Corruption.Create("full disk encryption extension", $"length is {payload.Length}, not {PayloadLength}", extensionOffset);
        }

        var offset = BinaryPrimitives.ReadUInt64BigEndian(payload);
        var length = BinaryPrimitives.ReadUInt64BigEndian(payload[8..]);
        if (offset > long.MaxValue || length > long.MaxValue)
        {
            throw Qcow2Corruption.Create("full disk encryption extension", "offset or length out of range", extensionOffset);
        }

        return new FullDiskEncryptionPointer((long)offset, (long)length);
    }

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var payload = new byte[PayloadLength];
        BinaryPrimitives.WriteUInt64BigEndian(payload, (ulong)Offset);
        BinaryPrimitives.WriteUInt64BigEndian(payload.AsSpan(8), (ulong)Length);
        return payload;
    }
}
