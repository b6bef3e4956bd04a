using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Concurrency;

/// <summary>
/// The overlap index the data write guard reads without the metadata lock: an immutable picture,
/// replaced (never changed) when the structures move, and covering snapshot L2 tables.
/// </summary>
[TestFixture]
public class MetadataOverlapIndexTests
{
    private const int ClusterBits = 16;
    private const long Cluster = 1L << ClusterBits;

    private static readonly Geometry Geometry = new(new Qcow2Header { Version = 3, ClusterBits = ClusterBits, Size = 1L << 30, RefcountOrder = 4 });

    [Test]
    public void A_published_index_never_changes_when_the_tables_do()
    {
        var l1 = new L1Table(3 * Cluster, new ulong[16]);
        l1.SetInMemory(0, new L1Entry((ulong)(4 * Cluster)));
        var tracker = new MetadataOverlapTracker(Geometry, new StreamStorage(new MemoryStream(), leaveOpen: false), readSnapshotL1Tables: true);
        var layout = Layout(l1, []);
        var before = tracker.Refresh(layout);
        tracker.Published.ShouldBeSameAs(before);
        before.Find(5 * Cluster, 4096, MetadataKind.Everything).ShouldBeNull();

        l1.SetInMemory(1, new L1Entry((ulong)(5 * Cluster))); // a writer adds an L2 table under the lock
        before.Find(5 * Cluster, 4096, MetadataKind.Everything).ShouldBeNull("an index a reader holds must not change under it");
        var after = tracker.Refresh(layout);
        after.ShouldNotBeSameAs(before);
        after.Find(5 * Cluster, 4096, MetadataKind.Everything).ShouldBe("active L2 table");
        tracker.Refresh(layout).ShouldBeSameAs(after, "nothing moved: nothing rebuilt");
    }

    [Test]
    public void Changed_L1_entries_are_followed_without_a_rescan_and_shared_tables_counted()
    {
        var l1 = new L1Table(3 * Cluster, new ulong[16]);
        var tracker = new MetadataOverlapTracker(Geometry, new StreamStorage(new MemoryStream(), leaveOpen: false), readSnapshotL1Tables: true);
        var layout = Layout(l1, []);
        tracker.Refresh(layout);
        l1.SetInMemory(0, new L1Entry((ulong)(7 * Cluster)));
        l1.SetInMemory(1, new L1Entry((ulong)(7 * Cluster))); // a hostile table: two entries, one L2 table
        l1.SetInMemory(2, new L1Entry((ulong)((9 * Cluster) + 512))); // misaligned: occupies clusters 9 and 10
        tracker.Refresh(layout).Find(10 * Cluster, 1, MetadataKind.Everything).ShouldBe("active L2 table");
        l1.SetInMemory(0, default);
        tracker.Refresh(layout).Find(7 * Cluster, 1, MetadataKind.Everything).ShouldBe("active L2 table", "entry 1 still points there");
        l1.SetInMemory(1, default);
        l1.SetInMemory(2, new L1Entry((ulong)(11 * Cluster)));
        var index = tracker.Refresh(layout);
        index.Find(7 * Cluster, 1, MetadataKind.Everything).ShouldBeNull();
        index.Find(9 * Cluster, 2 * Cluster, MetadataKind.Everything).ShouldBeNull();
        index.FirstOverlapEnd(7, 5).ShouldBe(12);
    }

    [Test]
    public void Snapshot_L2_tables_are_indexed_for_data_writes_but_not_in_QEMUs_cached_mode()
    {
        var file = new MemoryStream();
        var snapshotL1 = new byte[8 * 4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(snapshotL1, (ulong)(9 * Cluster));
        file.Position = 8 * Cluster;
        file.Write(snapshotL1);
        var tracker = new MetadataOverlapTracker(Geometry, new StreamStorage(file, leaveOpen: false), readSnapshotL1Tables: true);
        var snapshot = new SnapshotTableEntry { Id = "1", Name = "s", L1TableOffset = 8 * Cluster, L1Size = 4 };
        var index = tracker.Refresh(Layout(new L1Table(3 * Cluster, new ulong[16]), [snapshot]));
        index.Find(9 * Cluster, 512, MetadataKind.Everything).ShouldBe("inactive L2 table");
        index.Find(9 * Cluster, 512, MetadataKind.QemuCached).ShouldBeNull();
        index.Find(8 * Cluster, 512, MetadataKind.QemuCached).ShouldBe("inactive L1 table");
        index.FirstOverlapEnd(9, 1).ShouldBe(10, "allocation skips it");
        index.FirstOverlapEnd(10, 5).ShouldBeNull();
    }

    private static readonly object HeaderKey = new();

    private static MetadataLayout Layout(L1Table l1, IReadOnlyList<SnapshotTableEntry> snapshots) =>
        new(HeaderKey, l1, null, 0, 0, snapshots, 0, 0, []);
}
