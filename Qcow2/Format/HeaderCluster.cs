using System.Buffers.Binary;
using System.Text;

namespace QcowDedup.Qcow2.Format;

/// <summary>
/// Everything stored in cluster 0: the fixed header, the header extensions and the backing file
/// name. Extensions the core does not interpret are kept verbatim, in their on-disk order, and
/// written back after the known ones (as QEMU does), so rewriting the header never loses them.
/// </summary>
public sealed record HeaderCluster
{
    private const int ExtensionRecordHeaderSize = 8;

    /// <summary>The fixed header fields.</summary>
    public required Qcow2Header Header { get; init; }

    /// <summary>Backing file name as stored (relative names are relative to the image's directory).</summary>
    public string? BackingFileName { get; init; }

    /// <summary>Backing file format from the backing format extension, e.g. "qcow2" or "raw".</summary>
    public string? BackingFormat { get; init; }

    /// <summary>External data file name from the "DATA" extension.</summary>
    public string? ExternalDataFileName { get; init; }

    /// <summary>LUKS header pointer from the full disk encryption extension.</summary>
    public FullDiskEncryptionPointer? EncryptionHeader { get; init; }

    /// <summary>The bitmaps extension payload, when present.</summary>
    public BitmapsExtension? Bitmaps { get; init; }

    /// <summary>The feature name table (empty when absent).</summary>
    public IReadOnlyList<FeatureName> FeatureNames { get; init; } = [];

    /// <summary>Extensions the core does not interpret, in on-disk order; written back verbatim.</summary>
    public IReadOnlyList<HeaderExtension> OtherExtensions { get; init; } = [];

    /// <summary>
    /// Decodes cluster 0 (spec "Header extensions"): extensions run from header_length until an end
    /// record, or until the backing file name, or until the end of the cluster.
    /// </summary>
    /// <exception cref="InvalidDataException">An extension or the backing file name does not fit.</exception>
    public static HeaderCluster Parse(ReadOnlySpan<byte> cluster0)
    {
        var header = Qcow2Header.Parse(cluster0);
        var clusterSize = cluster0.Length;
        if (header.BackingFileOffset > clusterSize)
        {
            throw Qcow2Corruption.Create("header", $"backing_file_offset 0x{header.BackingFileOffset:x} is outside cluster 0", Qcow2Header.BackingFileOffsetOffset);
        }

        var end = header.BackingFileOffset != 0 ? (int)header.BackingFileOffset : clusterSize;
        var offset = header.Version == 2 ? Qcow2Layout.V2HeaderLength : header.HeaderLength;

        string? backingFormat = null, dataFile = null;
        FullDiskEncryptionPointer? encryption = null;
        BitmapsExtension? bitmaps = null;
        IReadOnlyList<FeatureName> featureNames = [];
        var others = new List<HeaderExtension>();
        var seen = new HashSet<uint>();

        while (end - offset >= ExtensionRecordHeaderSize)
        {
            var type = BinaryPrimitives.ReadUInt32BigEndian(cluster0[offset..]);
            var length = BinaryPrimitives.ReadUInt32BigEndian(cluster0[(offset + 4)..]);
            var recordOffset = offset;
            offset += ExtensionRecordHeaderSize;
            if (type == HeaderExtensionType.End)
            {
                break;
            }

            if (length > (uint)(end - offset))
            {
                throw Qcow2Corruption.Create("header extension", $"type 0x{type:x8} claims {length} bytes but only {end - offset} remain in cluster 0", recordOffset);
            }

            var payload = cluster0.Slice(offset, (int)length);
            offset += HeaderExtension.Align8((int)length);
            if (HeaderExtensionType.IsKnown(type) && !seen.Add(type))
            {
                throw Qcow2Corruption.Create("header extension", $"type 0x{type:x8} appears twice", recordOffset);
            }

            switch (type)
            {
                case HeaderExtensionType.BackingFormat:
                    backingFormat = DecodeName(payload, "backing format extension", recordOffset);
                    break;
                case HeaderExtensionType.ExternalDataFile:
                    dataFile = DecodeName(payload, "external data file extension", recordOffset);
                    break;
                case HeaderExtensionType.FeatureNameTable:
                    featureNames = FeatureName.ParseTable(payload);
                    break;
                case HeaderExtensionType.Bitmaps:
                    bitmaps = BitmapsExtension.Parse(payload, recordOffset);
                    break;
                case HeaderExtensionType.FullDiskEncryption:
                    encryption = FullDiskEncryptionPointer.Parse(payload, recordOffset);
                    break;
                default:
                    others.Add(new HeaderExtension(type, payload.ToArray()));
                    break;
            }
        }

        var backingName = ReadBackingFileName(cluster0, header);
        return new HeaderCluster
        {
            Header = header,
            BackingFileName = backingName,
            BackingFormat = backingName is null || backingFormat is "" ? null : backingFormat, // QEMU probes when the format is empty
            ExternalDataFileName = dataFile,
            EncryptionHeader = encryption,
            Bitmaps = bitmaps,
            FeatureNames = featureNames,
            OtherExtensions = others,
        };
    }

    /// <summary>The backing file name stored in cluster 0, or null for none.</summary>
    private static string? ReadBackingFileName(ReadOnlySpan<byte> cluster0, Qcow2Header header)
    {
        if (header.BackingFileOffset == 0)
        {
            return null;
        }

        if (header.BackingFileSize > Qcow2Layout.MaxBackingFileNameLength)
        {
            throw Qcow2Corruption.Create("header", $"backing_file_size {header.BackingFileSize} exceeds {Qcow2Layout.MaxBackingFileNameLength} bytes", Qcow2Header.BackingFileSizeOffset);
        }

        if (header.BackingFileOffset + header.BackingFileSize > cluster0.Length)
        {
            throw Qcow2Corruption.Create("header", "backing file name extends past cluster 0", header.BackingFileOffset);
        }

        // QEMU reads a name of length 0 as "" and opens no backing file for it, so it is no backing file.
        return header.BackingFileSize == 0 ? null : Encoding.UTF8.GetString(cluster0.Slice((int)header.BackingFileOffset, header.BackingFileSize));
    }

    /// <summary>
    /// Encodes cluster 0 in QEMU's order: fixed header (with unknown additional fields), backing
    /// format, data file name, encryption pointer, feature name table (v3 with clusters larger than
    /// 4 KiB, like QEMU), bitmaps, every other extension verbatim, the end record, then the backing
    /// file name. The header's backing_file_offset/size are recomputed.
    /// </summary>
    /// <exception cref="InvalidOperationException">The result does not fit in one cluster.</exception>
    public byte[] Serialize()
    {
        var clusterSize = Header.ClusterSize;
        var buffer = new byte[clusterSize];
        var extensions = new List<HeaderExtension>();
        if (BackingFileName is not null && BackingFormat is not null)
        {
            extensions.Add(new(HeaderExtensionType.BackingFormat, Encoding.UTF8.GetBytes(BackingFormat)));
        }

        if (ExternalDataFileName is not null)
        {
            extensions.Add(new(HeaderExtensionType.ExternalDataFile, Encoding.UTF8.GetBytes(ExternalDataFileName)));
        }

        if (EncryptionHeader is not null)
        {
            extensions.Add(new(HeaderExtensionType.FullDiskEncryption, EncryptionHeader.Encode()));
        }

        if (Header.Version >= 3 && clusterSize > 4096 && FeatureNames.Count > 0)
        {
            extensions.Add(new(HeaderExtensionType.FeatureNameTable, FeatureName.EncodeTable(FeatureNames)));
        }

        if (Bitmaps is not null)
        {
            extensions.Add(new(HeaderExtensionType.Bitmaps, Bitmaps.Encode()));
        }

        extensions.AddRange(OtherExtensions);

        var headerLength = Header.Version == 2 ? Qcow2Layout.V2HeaderLength : Header.HeaderLength;
        var backingBytes = BackingFileName is null ? [] : Encoding.UTF8.GetBytes(BackingFileName);
        var needed = headerLength + extensions.Sum(e => e.StoredLength) + ExtensionRecordHeaderSize + backingBytes.Length;
        if (needed > clusterSize)
        {
            throw new InvalidOperationException($"The qcow2 header needs {needed} bytes but cluster 0 holds only {clusterSize}.");
        }

        if (backingBytes.Length > Qcow2Layout.MaxBackingFileNameLength)
        {
            throw new InvalidOperationException($"The backing file name is {backingBytes.Length} bytes; qcow2 allows at most {Qcow2Layout.MaxBackingFileNameLength}.");
        }

        var offset = headerLength;
        foreach (var extension in extensions)
        {
            BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(offset), extension.Type);
            BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(offset + 4), (uint)extension.Data.Length);
            extension.Data.Span.CopyTo(buffer.AsSpan(offset + ExtensionRecordHeaderSize));
            offset += extension.StoredLength;
        }

        offset += ExtensionRecordHeaderSize; // end record: eight zero bytes
        var header = Header with
        {
            BackingFileOffset = BackingFileName is null ? 0 : offset,
            BackingFileSize = backingBytes.Length,
        };
        backingBytes.CopyTo(buffer.AsSpan(offset));
        header.Write(buffer);
        return buffer;
    }

    /// <summary>Looks up the name of a feature bit in the image's feature name table.</summary>
    public string? NameOf(FeatureKind kind, int bit) =>
        FeatureNames.FirstOrDefault(f => f.Kind == kind && f.Bit == bit)?.Name;

    private static string DecodeName(ReadOnlySpan<byte> payload, string structure, long offset)
    {
        if (payload.Length > Qcow2Layout.MaxBackingFileNameLength)
        {
            throw Qcow2Corruption.Create(structure, $"name is {payload.Length} bytes long, more than {Qcow2Layout.MaxBackingFileNameLength}", offset);
        }

        var end = payload.IndexOf((byte)0);
        return Encoding.UTF8.GetString(end < 0 ? payload : payload[..end]);
    }
}
