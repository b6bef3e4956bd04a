using System.Buffers.Binary;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>What a mutation target is, which decides the values tried on it.</summary>
internal enum TargetKind
{
    /// <summary>A big-endian integer field of a header or directory entry.</summary>
    Field,

    /// <summary>An 8-byte table entry holding a host offset and flags (L1, L2, refcount table, bitmap table).</summary>
    Entry,

    /// <summary>A refcount block: entries of the image's refcount width.</summary>
    RefcountBlock,

    /// <summary>Bytes without structure the mutator knows (names, journal blocks).</summary>
    Bytes,

    /// <summary>A field of the dedup header extension; the CRC is fixed after the change so the change is believed.</summary>
    DedupField,
}

/// <summary>The structures the mutator aims at, in groups the acceptance list names.</summary>
internal enum TargetGroup
{
    HeaderField,
    FeatureBits,
    ExtensionHeader,
    L1,
    L2,
    RefcountTable,
    RefcountBlock,
    SnapshotTable,
    BitmapDirectory,
    BitmapTable,
    BackingName,
    Dedup,
    DedupJournal,
}

/// <summary>One place to mutate.</summary>
internal readonly record struct Target(TargetGroup Group, TargetKind Kind, long Offset, int Width, string Name);

/// <summary>
/// Finds the structures of a valid seed image by reading its bytes directly (never through the
/// library under test): header fields, extensions, L1/L2 tables of the active disk and of every
/// snapshot, refcount table and blocks, snapshot table, bitmap directory and tables, backing
/// file name, the dedup extension and its journal.
/// </summary>
internal sealed class ImageLayout
{
    private const uint DedupMagic = 0x7C2E5DD1;
    private const uint BitmapsMagic = 0x23852875;
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    private readonly byte[] _image;
    private readonly List<Target> _targets = [];

    public ImageLayout(byte[] image)
    {
        _image = image;
        Version = (int)U32(4);
        ClusterBits = (int)U32(20);
        RefcountOrder = Version >= 3 ? (int)U32(96) : 4;
        ExtendedL2 = Version >= 3 && (U64(72) & (1UL << 4)) != 0;
        Parse();
        Groups = [.. _targets.Select(t => t.Group).Distinct()];
    }

    public int Version { get; }

    public int ClusterBits { get; }

    public int ClusterSize => 1 << ClusterBits;

    public int RefcountOrder { get; }

    public bool ExtendedL2 { get; }

    public IReadOnlyList<Target> Targets => _targets;

    public IReadOnlyList<TargetGroup> Groups { get; }

    /// <summary>Host offsets of metadata, for pointing entries at the wrong structure.</summary>
    public List<long> MetadataOffsets { get; } = [];

    /// <summary>Payload offset of the dedup extension and the CRC-covered length, when present.</summary>
    public (long Offset, int Length)? DedupPayload { get; private set; }

    private void Parse()
    {
        HeaderFields();
        var l1Offset = (long)U64(40);
        var l1Size = (int)U32(36);
        MetadataOffsets.Add(0);
        Table(TargetGroup.L1, "L1", l1Offset, l1Size);
        L2Tables(l1Offset, l1Size);

        var refcountTable = (long)U64(48);
        var refcountClusters = (int)U32(56);
        var refcountEntries = refcountClusters * ClusterSize / 8;
        Table(TargetGroup.RefcountTable, "refcount table", refcountTable, Math.Min(refcountEntries, 64));
        for (var i = 0; i < refcountEntries && refcountTable + (i * 8) + 8 <= _image.Length; i++)
        {
            var block = (long)(U64(refcountTable + (i * 8)) & OffsetMask);
            if (block != 0 && block + ClusterSize <= _image.Length)
            {
                MetadataOffsets.Add(block);
                _targets.Add(new(TargetGroup.RefcountBlock, TargetKind.RefcountBlock, block, ClusterSize, $"refcount block {i}"));
            }
        }

        Snapshots();
        var backingOffset = (long)U64(8);
        var backingSize = (int)U32(16);
        if (backingOffset != 0 && backingSize > 0)
        {
            _targets.Add(new(TargetGroup.BackingName, TargetKind.Bytes, backingOffset, backingSize, "backing file name"));
            _targets.Add(new(TargetGroup.BackingName, TargetKind.Field, 8, 8, "backing_file_offset"));
            _targets.Add(new(TargetGroup.BackingName, TargetKind.Field, 16, 4, "backing_file_size"));
        }

        Extensions();
    }

    private void HeaderFields()
    {
        (int Offset, int Width, string Name)[] fields =
        [
            (0, 4, "magic"), (4, 4, "version"), (20, 4, "cluster_bits"), (24, 8, "size"), (32, 4, "crypt_method"),
            (36, 4, "l1_size"), (40, 8, "l1_table_offset"), (48, 8, "refcount_table_offset"),
            (56, 4, "refcount_table_clusters"), (60, 4, "nb_snapshots"), (64, 8, "snapshots_offset"),
        ];
        foreach (var (offset, width, name) in fields)
        {
            _targets.Add(new(TargetGroup.HeaderField, TargetKind.Field, offset, width, name));
        }

        if (Version >= 3)
        {
            _targets.Add(new(TargetGroup.HeaderField, TargetKind.Field, 96, 4, "refcount_order"));
            _targets.Add(new(TargetGroup.HeaderField, TargetKind.Field, 100, 4, "header_length"));
            _targets.Add(new(TargetGroup.HeaderField, TargetKind.Field, 104, 1, "compression_type"));
            _targets.Add(new(TargetGroup.FeatureBits, TargetKind.Field, 72, 8, "incompatible_features"));
            _targets.Add(new(TargetGroup.FeatureBits, TargetKind.Field, 80, 8, "compatible_features"));
            _targets.Add(new(TargetGroup.FeatureBits, TargetKind.Field, 88, 8, "autoclear_features"));
        }
    }

    private void Table(TargetGroup group, string name, long offset, int count)
    {
        if (offset <= 0 || offset >= _image.Length)
        {
            return;
        }

        MetadataOffsets.Add(offset);
        for (var i = 0; i < count && offset + (i * 8) + 8 <= _image.Length; i++)
        {
            _targets.Add(new(group, TargetKind.Entry, offset + (i * 8), 8, $"{name} entry {i}"));
        }
    }

    private void L2Tables(long l1Offset, int l1Size)
    {
        var entrySize = ExtendedL2 ? 16 : 8;
        for (var i = 0; i < l1Size && l1Offset + (i * 8) + 8 <= _image.Length; i++)
        {
            var l2 = (long)(U64(l1Offset + (i * 8)) & OffsetMask);
            if (l2 == 0 || l2 + ClusterSize > _image.Length || MetadataOffsets.Contains(l2))
            {
                continue;
            }

            MetadataOffsets.Add(l2);
            for (var j = 0; j < ClusterSize / entrySize; j++)
            {
                var at = l2 + ((long)j * entrySize);
                if (U64(at) != 0 || j % 64 == 0)
                {
                    _targets.Add(new(TargetGroup.L2, TargetKind.Entry, at, 8, $"L2 entry {j} of 0x{l2:x}"));
                    if (ExtendedL2)
                    {
                        _targets.Add(new(TargetGroup.L2, TargetKind.Field, at + 8, 8, $"subcluster bitmap {j} of 0x{l2:x}"));
                    }
                }
            }
        }
    }

    private void Snapshots()
    {
        var count = (int)U32(60);
        long at = (long)U64(64);
        if (count == 0 || at == 0)
        {
            return;
        }

        MetadataOffsets.Add(at);
        for (var i = 0; i < count && at + 40 <= _image.Length; i++)
        {
            (int Offset, int Width, string Name)[] fields =
            [
                (0, 8, "l1_table_offset"), (8, 4, "l1_size"), (12, 2, "id_str_size"), (14, 2, "name_size"),
                (32, 4, "vm_state_size"), (36, 4, "extra_data_size"),
            ];
            foreach (var (offset, width, name) in fields)
            {
                _targets.Add(new(TargetGroup.SnapshotTable, TargetKind.Field, at + offset, width, $"snapshot {i} {name}"));
            }

            var l1 = (long)U64(at);
            var l1Size = (int)U32(at + 8);
            var idSize = U16(at + 12);
            var nameSize = U16(at + 14);
            var extra = (int)U32(at + 36);
            if (extra >= 16)
            {
                _targets.Add(new(TargetGroup.SnapshotTable, TargetKind.Field, at + 40 + 8, 8, $"snapshot {i} disk_size"));
            }

            _targets.Add(new(TargetGroup.SnapshotTable, TargetKind.Bytes, at + 40 + extra, idSize + nameSize, $"snapshot {i} id and name"));
            Table(TargetGroup.L1, $"snapshot {i} L1", l1, l1Size);
            L2Tables(l1, l1Size);
            var length = 40 + extra + idSize + nameSize;
            at += (length + 7) & ~7;
        }
    }

    private void Extensions()
    {
        long at = Version >= 3 ? U32(100) : 72;
        while (at + 8 <= Math.Min(_image.Length, ClusterSize))
        {
            var type = U32(at);
            var length = (int)U32(at + 4);
            if (type == 0)
            {
                break;
            }

            _targets.Add(new(TargetGroup.ExtensionHeader, TargetKind.Field, at, 4, $"extension 0x{type:x} type"));
            _targets.Add(new(TargetGroup.ExtensionHeader, TargetKind.Field, at + 4, 4, $"extension 0x{type:x} length"));
            var payload = at + 8;
            if (type == BitmapsMagic && length >= 24)
            {
                _targets.Add(new(TargetGroup.BitmapDirectory, TargetKind.Field, payload, 4, "nb_bitmaps"));
                _targets.Add(new(TargetGroup.BitmapDirectory, TargetKind.Field, payload + 8, 8, "bitmap_directory_size"));
                _targets.Add(new(TargetGroup.BitmapDirectory, TargetKind.Field, payload + 16, 8, "bitmap_directory_offset"));
                BitmapDirectory((int)U32(payload), (long)U64(payload + 16));
            }
            else if (type == DedupMagic && length >= 160)
            {
                DedupPayload = (payload, 160);
                foreach (var (offset, width) in new[] { (0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (11, 1), (12, 4), (16, 8), (24, 8), (32, 1), (36, 4), (40, 8), (48, 4), (52, 4), (56, 8), (64, 8), (72, 4), (76, 4), (80, 8), (88, 4), (92, 4), (96, 8), (104, 8), (112, 8), (120, 4), (128, 8) })
                {
                    _targets.Add(new(TargetGroup.Dedup, TargetKind.DedupField, payload + offset, width, $"dedup header +{offset}"));
                }

                _targets.Add(new(TargetGroup.Dedup, TargetKind.Bytes, payload, 160, "dedup header bytes (CRC not fixed)"));
                var blocks = (int)U32(payload + 12);
                foreach (var area in new[] { (long)U64(payload + 16), (long)U64(payload + 24), (long)U64(payload + 40) })
                {
                    if (area > 0 && area < _image.Length)
                    {
                        var bytes = (int)Math.Min(Math.Max(blocks, 1) * 4096L, _image.Length - area);
                        _targets.Add(new(TargetGroup.DedupJournal, TargetKind.Bytes, area, bytes, $"dedup area 0x{area:x}"));
                    }
                }
            }
            else if (length > 0)
            {
                _targets.Add(new(TargetGroup.ExtensionHeader, TargetKind.Bytes, payload, Math.Min(length, 4096), $"extension 0x{type:x} payload"));
            }

            at = payload + ((length + 7L) & ~7L);
        }
    }

    private void BitmapDirectory(int count, long at)
    {
        if (at <= 0)
        {
            return;
        }

        MetadataOffsets.Add(at);
        for (var i = 0; i < count && at + 24 <= _image.Length; i++)
        {
            (int Offset, int Width, string Name)[] fields =
            [
                (0, 8, "bitmap_table_offset"), (8, 4, "bitmap_table_size"), (12, 4, "flags"), (16, 1, "type"),
                (17, 1, "granularity_bits"), (18, 2, "name_size"), (20, 4, "extra_data_size"),
            ];
            foreach (var (offset, width, name) in fields)
            {
                _targets.Add(new(TargetGroup.BitmapDirectory, TargetKind.Field, at + offset, width, $"bitmap {i} {name}"));
            }

            Table(TargetGroup.BitmapTable, $"bitmap {i} table", (long)U64(at), (int)U32(at + 8));
            var length = 24 + (int)U32(at + 20) + U16(at + 18);
            at += (length + 7) & ~7;
        }
    }

    private uint U32(long offset) => offset + 4 <= _image.Length ? BinaryPrimitives.ReadUInt32BigEndian(_image.AsSpan((int)offset)) : 0;

    private ulong U64(long offset) => offset + 8 <= _image.Length ? BinaryPrimitives.ReadUInt64BigEndian(_image.AsSpan((int)offset)) : 0;

    private int U16(long offset) => offset + 2 <= _image.Length ? BinaryPrimitives.ReadUInt16BigEndian(_image.AsSpan((int)offset)) : 0;
}
