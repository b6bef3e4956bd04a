using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 4, acceptance 4, 5 and 6: what the index does over its life. Tiny log stores force
/// freezes and drops; journals full of churn pack; the log store rebuilt from the journal at open
/// equals the one before close; and the share cap bounds the references one cluster gets.
/// </summary>
[TestFixture]
[Category("Interop")]
public class IndexLifecycleTests : TempDirectoryFixture
{
    private const int ClusterSize = 4096;
    private const long DiskSize = 64L << 20;

    /// <summary>
    /// Found by an adversarial pass: a journal whose last block is too full for another entry used
    /// to be closed while it was replayed, a write that made a read-only open of the image throw.
    /// </summary>
    [TestCase(58)]
    [TestCase(59)]
    [TestCase(60)]
    public void A_read_only_open_replays_any_journal_without_writing(int clusters)
    {
        const int clusterSize = 4096;
        var path = PathOf("ro.qcow2");
        var cluster = new byte[clusterSize];
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64L << 20, ClusterSize = clusterSize }.WithDedup()))
        {
            for (var i = 0; i < clusters; i++)
            {
                new Random(i).NextBytes(cluster);
                image.Write((long)i * clusterSize, cluster);
            }
        }

        var before = File.ReadAllBytes(path);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions().WithDedup()))
        {
            image.GetDedupStatistics().IndexedClusters.ShouldBe(clusters);
            var read = new byte[clusterSize];
            image.Read((long)(clusters - 1) * clusterSize, read);
            new Random(clusters - 1).NextBytes(cluster);
            read.ShouldBe(cluster);
        }

        File.ReadAllBytes(path).ShouldBe(before, "a read-only open changes nothing");

        // Written again: the full block is closed by the next entry, and the index still finds everything.
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            image.Write((long)clusters * clusterSize, cluster);
            image.GetDedupStatistics().ClustersDeduplicated.ShouldBe(1);
            new Random(1000).NextBytes(cluster); // new content
            image.Write((long)(clusters + 1) * clusterSize, cluster);
        }

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions().WithDedup()))
        {
            image.GetDedupStatistics().IndexedClusters.ShouldBe(clusters + 1);
        }

        Qemu.AssertClean(path);
    }

    [Test]
    public void Frozen_incarnations_still_deduplicate_and_dropped_ones_cost_only_space()
    {
        var path = PathOf("retention.qcow2");
        var dedup = new DedupOptions { LogStoreOrder = 3, MaxIncarnations = 2 }; // 32 slots
        var model = new SparseModel(DiskSize);
        using (var image = CreateImage(path, dedup))
        {
            var index = IndexOf(image);
            var a = DedupOracle.Pattern(1, ClusterSize);
            Write(image, model, 0, a);
            WriteUnique(image, model, firstCluster: 1, count: 40, seed: 100); // the log store holding A freezes
            index.Freezes.ShouldBeGreaterThanOrEqualTo(1);
            index.LogStore.TryGet(ClusterHash.Compute(a), out _).ShouldBeFalse("A must now live only in an incarnation");

            Write(image, model, 100 * ClusterSize, a);
            HostOf(image, 100 * ClusterSize).ShouldBe(HostOf(image, 0), "a hit against a frozen incarnation shares the cluster");

            var b = DedupOracle.Pattern(2, ClusterSize);
            Write(image, model, 200 * ClusterSize, b);
            var freezesBefore = index.Freezes;
            WriteUnique(image, model, firstCluster: 300, count: 32 * 5, seed: 200); // B's incarnation is dropped
            (index.Freezes - freezesBefore).ShouldBeGreaterThan(dedup.MaxIncarnations);
            index.HashStore.Live.Count.ShouldBe(dedup.MaxIncarnations);
            index.HashStore.Limbo.Count.ShouldBeGreaterThan(0);

            Write(image, model, 201 * ClusterSize, b);
            HostOf(image, 201 * ClusterSize).ShouldNotBe(HostOf(image, 200 * ClusterSize), "B's entry was dropped: a miss stores a copy");
            var stats = image.GetDedupStatistics();
            TestContext.Out.WriteLine($"incarnations {string.Join(",", stats.IncarnationEntries)} of {stats.LogStoreCapacity} slots, fill {stats.IncarnationFillRate:P1}");
            stats.IncarnationFillRate.ShouldBeGreaterThanOrEqualTo(0.9, "incarnations frozen because the table was full");
            DedupOracle.AssertReadsModel(image, model);
        }

        AssertCleanAndEqual(path, model);
    }

    [Test]
    public void Under_a_steady_rewrite_load_the_file_stops_growing()
    {
        var path = PathOf("steady.qcow2");
        var dedup = new DedupOptions { LogStoreOrder = 3, MaxIncarnations = 2 };
        var model = new SparseModel(DiskSize);
        var lengths = new List<long>();
        using (var image = CreateImage(path, dedup))
        {
            for (var round = 0; round < 40; round++)
            {
                WriteUnique(image, model, firstCluster: 0, count: 64, seed: 1000 * (round + 1)); // 64 fresh contents over the same 64 clusters
                image.Flush();
                lengths.Add(new FileInfo(path).Length);
            }

            var index = IndexOf(image);
            index.Freezes.ShouldBeGreaterThan(40);
            DedupOracle.AssertReadsModel(image, model);
        }

        TestContext.Out.WriteLine($"file length by round: {string.Join(", ", lengths)}");
        lengths[^1].ShouldBe(lengths[10], "dropped incarnations' areas and freed data clusters are reused");
        AssertCleanAndEqual(path, model);
    }

    [Test]
    public void A_journal_full_of_churn_packs_then_a_full_table_freezes()
    {
        var path = PathOf("pack.qcow2");
        var dedup = new DedupOptions { LogStoreOrder = 4, MaxIncarnations = 4 }; // 64 slots, a journal of a few blocks
        var model = new SparseModel(DiskSize);
        using (var image = CreateImage(path, dedup))
        {
            var index = IndexOf(image);
            var contents = Enumerable.Range(10, 3).Select(seed => DedupOracle.Pattern(seed, ClusterSize)).ToArray();
            for (var i = 0; i < 600 && index.Packs == 0; i++)
            {
                Write(image, model, 0, contents[i % 3]); // each rewrite frees a cluster and indexes a new one: churn, few live entries
            }

            index.Packs.ShouldBeGreaterThan(0, "a journal whose live records are few is packed");
            index.Freezes.ShouldBe(0);
            index.LogStore.Count.ShouldBeLessThanOrEqualTo(3);

            WriteUnique(image, model, firstCluster: 1, count: 80, seed: 500);
            index.Freezes.ShouldBeGreaterThan(0, "a full table freezes");
            DedupOracle.AssertReadsModel(image, model);
        }

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup(dedup)))
        {
            Write(image, model, 90 * ClusterSize, DedupOracle.Pattern(10, ClusterSize));
            DedupOracle.AssertReadsModel(image, model);
        }

        AssertCleanAndEqual(path, model);
    }

    [Test]
    public void The_log_store_rebuilt_from_the_journal_equals_the_one_before_close()
    {
        var path = PathOf("rebuild.qcow2");
        var dedup = new DedupOptions { LogStoreOrder = 6 }; // 256 slots: nothing freezes
        var model = new SparseModel(DiskSize);
        List<IndexEntry> before;
        int invalidations;
        using (var image = CreateImage(path, dedup))
        {
            WriteUnique(image, model, firstCluster: 0, count: 150, seed: 7);
            WriteUnique(image, model, firstCluster: 0, count: 20, seed: 10_000); // overwrites: invalidations
            image.Discard(30L * ClusterSize, 10L * ClusterSize);
            model.Zero(30L * ClusterSize, 10L * ClusterSize);
            var index = IndexOf(image);
            index.Freezes.ShouldBe(0);
            before = [.. index.LogStore.Entries()];
            invalidations = index.Invalidations;
        }

        before.Count.ShouldBe(170);
        invalidations.ShouldBeGreaterThan(0);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions().WithDedup(dedup)))
        {
            var index = IndexOf(image);
            index.LogStore.Entries().ToHashSet().SetEquals(before).ShouldBeTrue("every entry and only those come back");
            index.Invalidations.ShouldBe(invalidations);
        }
    }

    [TestCase(0, 7)] // default cap: half of refcount_bits=4's maximum of 15
    [TestCase(15, 15)]
    public void The_share_cap_bounds_references_per_cluster(int maxShares, int expectedCap)
    {
        var path = PathOf("cap.qcow2");
        var model = new SparseModel(DiskSize);
        var content = DedupOracle.Pattern(3, ClusterSize);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize, ClusterSize = ClusterSize, RefcountBits = 4 }
            .WithDedup(new DedupOptions { MaxSharesPerCluster = maxShares })))
        {
            IndexOf(image).ShareCap.ShouldBe(expectedCap);
            for (var i = 0; i < 40; i++)
            {
                Write(image, model, (long)i * ClusterSize, content);
            }

            DedupOracle.AssertReadsModel(image, model);
        }

        DedupOracle.HostDataClusters(path, ClusterSize).ShouldBe((40 + expectedCap - 1) / expectedCap);
        AssertCleanAndEqual(path, model);
    }

    [Test]
    public void The_memory_budget_drops_old_incarnations()
    {
        var path = PathOf("budget.qcow2");
        var tableBytes = new DedupOptions { LogStoreOrder = 3 };
        long budget;
        using (var probe = CreateImage(PathOf("probe.qcow2"), tableBytes))
        {
            budget = IndexOf(probe).MemoryBytes + 300; // the table plus room for a few filters of 32 two-byte tags
        }

        var model = new SparseModel(DiskSize);
        using (var image = CreateImage(path, tableBytes with { MaxIncarnations = 100, IndexMemoryBudget = budget }))
        {
            WriteUnique(image, model, firstCluster: 0, count: 32 * 10, seed: 9);
            var index = IndexOf(image);
            index.Freezes.ShouldBeGreaterThan(5);
            index.MemoryBytes.ShouldBeLessThanOrEqualTo(budget);
            index.HashStore.Live.Count.ShouldBeLessThan(index.Freezes);
        }

        AssertCleanAndEqual(path, model);
    }

    private static Qcow2Image CreateImage(string path, DedupOptions dedup) =>
        Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize, ClusterSize = ClusterSize }.WithDedup(dedup));

    internal static DedupIndex IndexOf(Qcow2Image image) => image.GetExtension<DedupExtension>()!.Index!;

    private static void Write(Qcow2Image image, SparseModel model, long offset, byte[] data)
    {
        image.Write(offset, data);
        model.Write(offset, data);
    }

    private static void WriteUnique(Qcow2Image image, SparseModel model, int firstCluster, int count, int seed)
    {
        for (var i = 0; i < count; i++)
        {
            Write(image, model, (long)(firstCluster + i) * ClusterSize, DedupOracle.Pattern(seed + i, ClusterSize));
        }
    }

    private static long? HostOf(Qcow2Image image, long guestOffset) => image.GetExtents(guestOffset, ClusterSize)[0].HostOffset;


    private void AssertCleanAndEqual(string path, SparseModel model)
    {
        var raw = PathOf(Path.GetFileNameWithoutExtension(path) + ".raw");
        model.WriteRaw(raw);
        DedupOracle.AssertCleanAndEqual(path, raw);
    }
}
