using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Tests.Api;

/// <summary>The library's figures, pinned to what qemu-img 7.2 prints (no qemu needed).</summary>
[TestFixture]
public class MeasureFigureTests
{
    [TestCase(65536, 16, false, Preallocation.Off, 393216L, 1074135040L)]
    [TestCase(4096, 16, false, Preallocation.Off, 2637824L, 1076379648L)]
    [TestCase(2 << 20, 16, false, Preallocation.Off, 10485760L, 1084227584L)]
    [TestCase(65536, 64, false, Preallocation.Off, 524288L, 1074266112L)]
    [TestCase(512, 16, false, Preallocation.Off, 21385216L, 1095127040L)]
    [TestCase(65536, 16, true, Preallocation.Off, 524288L, 1074266112L)]
    [TestCase(65536, 16, false, Preallocation.Full, 1074135040L, 1074135040L)]
    [TestCase(65536, 16, false, Preallocation.Metadata, 393216L, 1074135040L)]
    public void One_gibibyte(int clusterSize, int refcountBits, bool extendedL2, Preallocation preallocation, long required, long fullyAllocated)
    {
        var options = new Qcow2CreateOptions { Size = 1L << 30, ClusterSize = clusterSize, RefcountBits = refcountBits, ExtendedL2 = extendedL2, Preallocation = preallocation };
        Qcow2Image.Measure(options).ShouldBe(new Qcow2Measurement(required, fullyAllocated, null));
    }

    [Test]
    public void An_empty_disk_needs_header_refcount_table_and_block()
    {
        Qcow2Image.Measure(new Qcow2CreateOptions { Size = 0 }).ShouldBe(new Qcow2Measurement(196608, 196608, null));
    }

    [Test]
    public void A_map_counts_each_target_cluster_holding_data_once()
    {
        MapEntry Data(long start, long length) => new(start, length, 0, true, false, true, start, null);
        MapEntry Zero(long start, long length) => new(start, length, 0, true, true, false, null, null);
        var options = new Qcow2CreateOptions { ClusterSize = 4096 };
        var empty = Qcow2Image.Measure(options, 64 << 10, []);
        // [0,100) and [200,300) share cluster 0; [4000,4200) touches clusters 0 and 1; [8192,8193) is cluster 2; zeros count nothing.
        var measured = Qcow2Image.Measure(options, 64 << 10, [Data(0, 100), Zero(100, 100), Data(200, 100), Data(4000, 200), Zero(4200, 3992), Data(8192, 1), Zero(8193, 57343)]);
        (measured.Required - empty.Required).ShouldBe(3 * 4096);
        measured.FullyAllocated.ShouldBe(empty.FullyAllocated);
    }

    [Test]
    public void Impossible_targets_are_refused_naming_the_option()
    {
        Should.Throw<ArgumentException>(() => Qcow2Image.Measure(new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 3000 })).Message.ShouldContain("Cluster size 3000");
        Should.Throw<ArgumentException>(() => Qcow2Image.Measure(new Qcow2CreateOptions { Size = 1 << 20, RefcountBits = 128 })).Message.ShouldContain("Refcount width 128");
        Should.Throw<ArgumentException>(() => Qcow2Image.Measure(new Qcow2CreateOptions { Size = 1L << 50, ClusterSize = 512 })).Message.ShouldContain("too large");
        Should.Throw<ArgumentException>(() => Qcow2Image.Measure(new Qcow2CreateOptions { Size = -512 }));
        Should.Throw<ArgumentException>(() => Qcow2Image.Measure(new Qcow2CreateOptions()));
    }
}
