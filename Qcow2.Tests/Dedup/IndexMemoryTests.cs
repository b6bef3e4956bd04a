using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Dedup.Stores;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 11, acceptance 4: the index's RAM, split as it is budgeted — a fixed log store table, and
/// frozen incarnations whose entries stay on disk behind at most 4 bytes of filter per entry.
/// </summary>
[TestFixture]
public class IndexMemoryTests : TempDirectoryFixture
{
    [Test]
    public void Frozen_incarnations_cost_at_most_four_bytes_per_entry_beside_the_log_store_budget()
    {
        const int clusterSize = 4096;
        using var image = Qcow2Image.Create(PathOf("index.qcow2"), new Qcow2CreateOptions { Size = 64L << 20, ClusterSize = clusterSize }.WithDedup());
        var cluster = new byte[clusterSize];
        new Random(5).NextBytes(cluster);
        for (long i = 0; i < image.Size / clusterSize; i++)
        {
            BitConverter.TryWriteBytes(cluster, i);
            image.Write(i * clusterSize, cluster);
        }

        var stats = image.GetDedupStatistics();
        stats.Freezes.ShouldBeGreaterThan(0, "the log store filled and froze at least once");
        stats.IncarnationEntries.Sum().ShouldBeGreaterThan(0);
        stats.IncarnationBytesPerEntry.ShouldBeInRange(0.5, 4.0);
        stats.LogStoreMemoryBytes.ShouldBeGreaterThan(0);
        (stats.LogStoreMemoryBytes / stats.LogStoreCapacity).ShouldBeLessThanOrEqualTo(64, "bytes per log store slot");
        (stats.LogStoreMemoryBytes + stats.IncarnationMemoryBytes).ShouldBeLessThanOrEqualTo(stats.IndexMemoryBytes);
    }

    /// <summary>
    /// The default log store holds half the disk's clusters, up to 2^15 buckets (8 MiB of table):
    /// enough that a 2 GiB disk of 4 KiB clusters copied twice finds its first copy in RAM, and small
    /// enough that a frozen table keeps 2-byte tags, under 4 bytes per entry once half full.
    /// </summary>
    [TestCase(64L << 20, 4096, 8192)]
    [TestCase(2L << 30, 4096, 131072)]
    [TestCase(1L << 40, 65536, 131072)]
    [TestCase(1L << 40, 4096, 131072)]
    public void The_default_log_store_is_sized_from_the_disk_within_its_budget(long size, int clusterSize, int slots)
    {
        using var image = Qcow2Image.Create(PathOf("sized.qcow2"), new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize }.WithDedup());
        var stats = image.GetDedupStatistics();
        stats.LogStoreCapacity.ShouldBe(slots);
        stats.LogStoreMemoryBytes.ShouldBeLessThanOrEqualTo(8L << 20);
        var order = int.Log2(slots / LogStore.SlotsPerBucket);
        (Incarnation.FilterBytes(order) / (double)slots).ShouldBeLessThanOrEqualTo(2.0, "filter bytes per slot of a frozen table");
    }
}
