using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Tests.Format;

[TestFixture]
public class HeaderCodecTests
{
    /// <summary>The first 0x78 bytes of a 64 MiB image made by qemu-img 7.2 (feature table start included).</summary>
    private static readonly byte[] QemuHeader = Convert.FromHexString(
        "514649fb00000003000000000000000000000000000000100000000004000000" +
        "0000000000000001000000000003000000000000000100000000000100000000" +
        "0000000000000000000000000000000000000000000000000000000000000000" +
        "00000004000000700000000000000000" +
        "6803f85700000000");

    [Test]
    public void Parses_the_fixed_header_qemu_img_writes()
    {
        var cluster = new byte[65536];
        QemuHeader.CopyTo(cluster, 0);
        var header = Qcow2Header.Parse(cluster);
        header.Version.ShouldBe(3);
        header.ClusterBits.ShouldBe(16);
        header.Size.ShouldBe(64L << 20);
        header.L1Size.ShouldBe(1);
        header.L1TableOffset.ShouldBe(0x30000);
        header.RefcountTableOffset.ShouldBe(0x10000);
        header.RefcountTableClusters.ShouldBe(1);
        header.RefcountOrder.ShouldBe(4);
        header.HeaderLength.ShouldBe(112);
        header.CompressionType.ShouldBe(CompressionType.Deflate);
    }

    [Test]
    public void Rewriting_cluster_0_preserves_unknown_fields_extensions_and_compatible_bits()
    {
        var original = new HeaderCluster
        {
            Header = new Qcow2Header
            {
                Version = 3,
                ClusterBits = 16,
                Size = 1 << 30,
                L1Size = 2,
                L1TableOffset = 0x30000,
                RefcountTableOffset = 0x10000,
                RefcountTableClusters = 1,
                RefcountOrder = 4,
                HeaderLength = 120,
                Compatible = (CompatibleFeatures)(1UL << 7),
                UnknownAdditionalFields = new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 },
            },
            BackingFileName = "base.qcow2",
            BackingFormat = "qcow2",
            FeatureNames = FeatureName.Standard,
            OtherExtensions = [new HeaderExtension(0x12345678, "HELLOEXT"u8.ToArray())],
        };

        var reparsed = HeaderCluster.Parse(original.Serialize());

        reparsed.Header.HeaderLength.ShouldBe(120);
        reparsed.Header.UnknownAdditionalFields.ToArray().ShouldBe(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
        reparsed.Header.Compatible.ShouldBe((CompatibleFeatures)(1UL << 7));
        reparsed.BackingFileName.ShouldBe("base.qcow2");
        reparsed.BackingFormat.ShouldBe("qcow2");
        reparsed.FeatureNames.Count.ShouldBe(8);
        reparsed.OtherExtensions.ShouldHaveSingleItem().Type.ShouldBe(0x12345678u);
        reparsed.OtherExtensions[0].Data.ToArray().ShouldBe("HELLOEXT"u8.ToArray());
    }

    [Test]
    public void Feature_name_table_is_omitted_for_4k_clusters_like_qemu()
    {
        var cluster = new HeaderCluster
        {
            Header = new Qcow2Header { Version = 3, ClusterBits = 12, Size = 1 << 20, HeaderLength = 112, RefcountOrder = 4 },
            FeatureNames = FeatureName.Standard,
        };
        HeaderCluster.Parse(cluster.Serialize()).FeatureNames.ShouldBeEmpty();
    }

    [Test]
    public void An_extension_longer_than_the_cluster_is_rejected_by_name()
    {
        var cluster = new HeaderCluster
        {
            Header = new Qcow2Header { Version = 3, ClusterBits = 9, Size = 1 << 20, HeaderLength = 112, RefcountOrder = 4 },
        }.Serialize();
        cluster[112] = 0x12; // type 0x12000000
        cluster[118] = 0x01; // length 0x100 ...
        cluster[119] = 0xff; // ... 0x1ff = 511 > the 392 bytes left after the record header
        var error = Should.Throw<InvalidDataException>(() => HeaderCluster.Parse(cluster));
        error.Message.ShouldContain("header extension");
        error.Data[Qcow2Corruption.HostOffsetKey].ShouldBe(112L);
    }

    [Test]
    public void Unknown_incompatible_bit_is_refused_naming_it_from_the_feature_table()
    {
        var cluster = new HeaderCluster
        {
            Header = new Qcow2Header { Version = 3, ClusterBits = 16, Size = 1 << 20, HeaderLength = 112, RefcountOrder = 4, Incompatible = (IncompatibleFeatures)(1UL << 9) },
            FeatureNames = [new FeatureName(FeatureKind.Incompatible, 9, "time travel")],
        };
        Should.Throw<NotSupportedException>(() => HeaderValidator.ValidateIncompatibleFeatures(cluster)).Message.ShouldContain("time travel");
        var unnamed = cluster with { FeatureNames = [] };
        Should.Throw<NotSupportedException>(() => HeaderValidator.ValidateIncompatibleFeatures(unnamed)).Message.ShouldContain("Unknown incompatible feature: 200");
    }

    [Test]
    public void Snapshot_entry_round_trips_with_extra_data()
    {
        var entry = new SnapshotTableEntry
        {
            L1TableOffset = 0x70000,
            L1Size = 4,
            Id = "1",
            Name = "before upgrade",
            DateSeconds = 1_700_000_000,
            DateNanoseconds = 5,
            VmClockNanoseconds = 42,
            VmStateSize = 0,
            DiskSize = 1 << 30,
            InstructionCount = -1,
        };
        var buffer = new byte[entry.StoredLength];
        entry.Write(buffer);
        SnapshotTableEntry.TryParse(buffer, 0, out var parsed, out var consumed).ShouldBeTrue();
        consumed.ShouldBe(buffer.Length);
        parsed.ShouldBe(entry with { UnknownExtraData = parsed!.UnknownExtraData });
    }
}
