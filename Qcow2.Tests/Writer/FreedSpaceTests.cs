using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Issue 11, acceptance 3: clusters a session frees (discard, rewrites that share, <c>qcow2 dedup</c>)
/// go back to the file system — punched once their freeing is durable — so <c>du</c> of the image
/// shrinks by what was reported freed. (CopiedFlagTests hold the other side: a cluster a damaged
/// image calls free while another entry still maps it keeps its bytes.)
/// </summary>
[TestFixture]
[Category("Interop")]
public class FreedSpaceTests : TempDirectoryFixture
{
    private const int ClusterSize = 65536;
    private const int Megabyte = 1 << 20;

    [Test]
    public void Discard_punches_the_freed_clusters()
    {
        var path = PathOf("discard.qcow2");
        var data = RandomBytes(16 * Megabyte, seed: 1);
        WriteImage(path, 32 * Megabyte, (0, data), (20 * Megabyte, RandomBytes(4 * Megabyte, seed: 2)));
        var before = AllocatedBytes(path);

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Discard(0, 16 * Megabyte); // clusters in the middle of the file: only a hole gives them back
        }

        var freed = before - AllocatedBytes(path);
        freed.ShouldBeGreaterThanOrEqualTo((long)(0.9 * 16 * Megabyte), $"allocated {before} -> {before - freed}");
        Qemu.AssertClean(path);
        ReadGuest(path, 0, 16 * Megabyte).ShouldAllBe(b => b == 0);
        ReadGuest(path, 20 * Megabyte, 4 * Megabyte).ShouldBe(RandomBytes(4 * Megabyte, seed: 2));
    }

    [Test]
    public void Discard_at_the_end_of_the_file_gives_its_blocks_back_and_qemu_reuses_the_range()
    {
        var path = PathOf("tail.qcow2");
        WriteImage(path, 32 * Megabyte, (0, RandomBytes(2 * Megabyte, seed: 3)), (8 * Megabyte, RandomBytes(8 * Megabyte, seed: 4)));
        var before = AllocatedBytes(path);

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Discard(8 * Megabyte, 8 * Megabyte);
        }

        AllocatedBytes(path).ShouldBeLessThan(before - (7L * Megabyte));
        Qemu.AssertClean(path);
        ReadGuest(path, 0, 2 * Megabyte).ShouldBe(RandomBytes(2 * Megabyte, seed: 3));
        Qemu.Io(path, "write -P 0x5a 8M 1M"); // QEMU allocates past the cut as usual
        Qemu.AssertClean(path);
    }

    [Test]
    public void Without_return_of_freed_space_the_file_keeps_its_blocks()
    {
        var path = PathOf("keep.qcow2");
        WriteImage(path, 32 * Megabyte, (0, RandomBytes(16 * Megabyte, seed: 5)));
        var before = AllocatedBytes(path);
        var length = new FileInfo(path).Length;

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, ReturnFreedSpace = false }))
        {
            image.Discard(0, 16 * Megabyte);
        }

        AllocatedBytes(path).ShouldBe(before);
        new FileInfo(path).Length.ShouldBe(length);
        Qemu.AssertClean(path);
    }

    [Test]
    public void Offline_dedup_shrinks_du_by_what_it_reports_freed()
    {
        var path = PathOf("dup.qcow2");
        var block = RandomBytes(4 * Megabyte, seed: 6);
        WriteImage(path, 64 * Megabyte, (0, block), (8 * Megabyte, block), (16 * Megabyte, block), (24 * Megabyte, RandomBytes(Megabyte, seed: 7)));
        var before = AllocatedBytes(path);

        var result = OfflineDeduplicator.Run(path);

        result.BytesFreed.ShouldBe(8L * Megabyte);
        var shrunk = before - AllocatedBytes(path);
        shrunk.ShouldBeGreaterThanOrEqualTo((long)(0.9 * result.BytesFreed), $"allocated {before} -> {before - shrunk}, reported {result.BytesFreed} freed");
        Qemu.AssertClean(path);
        ReadGuest(path, 16 * Megabyte, 4 * Megabyte).ShouldBe(block);
    }

    [Test]
    public void Rewrites_that_share_clusters_give_back_the_clusters_they_replaced()
    {
        var block = RandomBytes(4 * Megabyte, seed: 8);
        long AllocatedAfterSharing(string path, bool returnFreedSpace)
        {
            using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64 * Megabyte, ClusterSize = ClusterSize }.WithDedup()))
            {
                image.Write(0, block);
                image.Write(8 * Megabyte, RandomBytes(4 * Megabyte, seed: 9));
                image.Write(16 * Megabyte, RandomBytes(Megabyte, seed: 10)); // keeps the range freed below off the tail
            }

            using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, ReturnFreedSpace = returnFreedSpace }.WithDedup()))
            {
                image.Write(8 * Megabyte, block); // 4 MiB of unique clusters replaced by shared ones
            }

            Qemu.AssertClean(path);
            ReadGuest(path, 8 * Megabyte, 4 * Megabyte).ShouldBe(block);
            return AllocatedBytes(path);
        }

        var kept = AllocatedAfterSharing(PathOf("kept.qcow2"), returnFreedSpace: false);
        var returned = AllocatedAfterSharing(PathOf("returned.qcow2"), returnFreedSpace: true);

        (kept - returned).ShouldBeGreaterThanOrEqualTo((long)(0.9 * 4 * Megabyte), $"{kept} bytes allocated when freed clusters are kept, {returned} when returned");
    }

    [Test]
    public void A_storage_that_cannot_punch_holes_changes_nothing()
    {
        var path = PathOf("stream.qcow2");
        WriteImage(path, 16 * Megabyte, (0, RandomBytes(4 * Megabyte, seed: 11)), (8 * Megabyte, RandomBytes(Megabyte, seed: 12)));
        var bytes = File.ReadAllBytes(path);
        using (var stream = new MemoryStream())
        {
            stream.Write(bytes);
            using (var image = Qcow2Image.Open(stream, new Qcow2OpenOptions { Writable = true, LeaveOpen = true }))
            {
                image.Discard(0, 4 * Megabyte);
            }

            File.WriteAllBytes(path, stream.ToArray());
        }

        Qemu.AssertClean(path);
        ReadGuest(path, 8 * Megabyte, Megabyte).ShouldBe(RandomBytes(Megabyte, seed: 12));
    }

    [Test]
    public void Extensions_see_a_freed_cluster_as_free_before_the_flush_writes_its_refcount()
    {
        // The last reference of a data cluster leaves the refcount blocks only at the flush; until
        // then the allocator counts it free, and so must every other reader of refcounts.
        var path = PathOf("probe.qcow2");
        WriteImage(path, 4 * Megabyte, (0, RandomBytes(ClusterSize, seed: 13)));
        var probe = new ProbeExtension();
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, Extensions = [probe] });
        var host = image.GetExtents(0, ClusterSize).Single().HostOffset!.Value;
        probe.Host!.RunLocked(() => probe.Host.GetRefcount(host)).ShouldBe(1UL);

        image.Discard(0, ClusterSize);

        probe.Host.RunLocked(() => probe.Host.GetRefcount(host)).ShouldBe(0UL, "freed, though the block still counts it until the flush");
        image.Flush();
        probe.Host.RunLocked(() => probe.Host.GetRefcount(host)).ShouldBe(0UL);
    }

    /// <summary>An extension that only keeps the host it is given, to ask it questions.</summary>
    private sealed class ProbeExtension : IImageExtension
    {
        public IImageExtensionHost? Host { get; private set; }

        public uint HeaderExtensionType => 0x70726f62;

        public int AutoclearBit => 40;

        public string FeatureName => "probe";

        public IClusterAllocator? Allocator => null;

        public void Open(IImageExtensionHost host, ReadOnlyMemory<byte>? payload, bool autoclearBitSet) => Host = host;

        public void Flush(IImageExtensionHost host)
        {
        }

        public void Close(IImageExtensionHost host)
        {
        }
    }

    private static void WriteImage(string path, long size, params (long Offset, byte[] Data)[] writes)
    {
        using var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = ClusterSize });
        foreach (var (offset, data) in writes)
        {
            image.Write(offset, data);
        }
    }

    private static byte[] ReadGuest(string path, long offset, int length)
    {
        var buffer = new byte[length];
        using var image = Qcow2Image.Open(path);
        image.Read(offset, buffer);
        return buffer;
    }

    private static long AllocatedBytes(string path) =>
        Posix.TryStat(path, out var status) ? status.AllocatedBytes : throw new InvalidOperationException($"statx failed on {path}");

    private static byte[] RandomBytes(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
