using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 11, acceptance 2: a file system over a 4 KiB-cluster dedup image interleaves small writes
/// (its tables, directories) with whole-cluster file data and flushes often. Neither the index's
/// journal, the ordering rules of sharing nor the ordered flush may turn that into a pile of fsyncs.
/// </summary>
[TestFixture]
public class FlushBatchingTests : TempDirectoryFixture
{
    private const int ClusterSize = 4096;
    private const int Megabyte = 1 << 20;

    [TestCase(false)]
    [TestCase(true)]
    public void Copying_duplicate_clusters_between_small_writes_syncs_a_bounded_number_of_times(bool interleaveSmallWrites)
    {
        var path = PathOf("fs.qcow2");
        var original = new byte[8 * Megabyte];
        new Random(1).NextBytes(original);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 256 * Megabyte, ClusterSize = ClusterSize }.WithDedup()))
        {
            image.Write(16 * Megabyte, original);
        }

        var file = FileStorage.Open(path, writable: true);
        using (var image = Qcow2Image.Open(file, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            var small = new byte[512];
            var before = file.DiskFlushes;
            for (var offset = 0; offset < original.Length; offset += ClusterSize)
            {
                image.Write(64L * Megabyte + offset, original.AsSpan(offset, ClusterSize));
                if (interleaveSmallWrites)
                {
                    small[0] = (byte)(offset >> 12);
                    image.Write(Megabyte + (offset >> 3), small); // tables and directories the file system extends as it goes
                }
            }

            image.GetDedupStatistics().ClustersDeduplicated.ShouldBeGreaterThanOrEqualTo(original.Length / ClusterSize);
            (file.DiskFlushes - before).ShouldBeLessThanOrEqualTo(8, "2,048 shared clusters need no fsync of their own");
        }
    }

    [TestCase(false)]
    [TestCase(true)]
    public void A_flush_after_allocating_writes_costs_at_most_four_fsyncs_and_one_more_with_dedup(bool dedup)
    {
        var path = PathOf("flushes.qcow2");
        var create = new Qcow2CreateOptions { Size = 256 * Megabyte, ClusterSize = ClusterSize };
        using (Qcow2Image.Create(path, dedup ? create.WithDedup() : create))
        {
        }

        var file = FileStorage.Open(path, writable: true);
        var open = new Qcow2OpenOptions { Writable = true };
        const int rounds = 100;
        double perFlush;
        using (var image = Qcow2Image.Open(file, dedup ? open.WithDedup() : open))
        {
            var data = new byte[ClusterSize];
            var before = file.DiskFlushes;
            for (var i = 0; i < rounds; i++)
            {
                new Random(i).NextBytes(data);
                image.Write(i * 3L * ClusterSize, data); // a fresh cluster: refcount and L2 changes
                image.Write(Megabyte + (i * 512), data.AsSpan(0, 512));
                image.Flush();
            }

            perFlush = (double)(file.DiskFlushes - before) / rounds;
        }

        // Dirty bit set, refcounts (with the data), L2 table, dirty bit cleared (7 before issue 11);
        // the index adds its journal block, and now and then the journal's own upkeep.
        perFlush.ShouldBeLessThanOrEqualTo(dedup ? 5.5 : 4.0);
        Qemu.AssertClean(path);
    }

    [Test]
    public void Whole_cluster_rewrites_that_free_their_old_clusters_are_not_synced_one_by_one()
    {
        // With dedup a whole-cluster rewrite goes out of place: a new cluster (an increment) and the
        // old one freed (a decrement). Ordered at once, each free made the refcount cache wait for
        // the L2 cache and each allocation the other way round: two fsyncs per cluster (5,556 for a
        // 46 MiB tree copied through FAT). Frees now reach the refcount blocks at the next flush.
        var path = PathOf("rewrites.qcow2");
        using (Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64 * Megabyte, ClusterSize = ClusterSize }.WithDedup()))
        {
        }

        var file = FileStorage.Open(path, writable: true);
        var data = new byte[ClusterSize];
        var random = new Random(3);
        long fsyncs;
        using (var image = Qcow2Image.Open(file, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            var before = file.DiskFlushes;
            for (var round = 0; round < 4; round++)
            {
                for (var cluster = 0; cluster < 512; cluster++)
                {
                    random.NextBytes(data);
                    image.Write((long)cluster * ClusterSize, data);
                }
            }

            fsyncs = file.DiskFlushes - before;
        }

        fsyncs.ShouldBeLessThanOrEqualTo(16, "1,536 rewrites that each free a cluster");
        Qemu.AssertClean(path);
        using var reopened = Qcow2Image.Open(path);
        var read = new byte[ClusterSize];
        reopened.Read(511L * ClusterSize, read);
        read.ShouldBe(data);
    }
}
