using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Issue 11: a write of many whole clusters that all need fresh host clusters is one allocation of
/// contiguous clusters and one data write (QEMU's qcow2_alloc_host_offset), not a system call per
/// cluster, and clusters rewritten in place whose host clusters are adjacent are one data write;
/// clusters that cannot join a run (zeros, partial or extended-L2 rewrites, the last partial one)
/// still take the per-cluster path, and QEMU reads the result as the same bytes with a clean check.
/// </summary>
[TestFixture]
[Category("Interop")]
public class ClusterRunTests : TempDirectoryFixture
{
    [Test]
    public void Sixteen_fresh_clusters_are_written_with_one_data_write()
    {
        var path = PathOf("run.qcow2");
        using (Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 32 << 20 }))
        {
        }

        var data = new byte[1 << 20];
        new Random(5).NextBytes(data);
        var counting = new CountingStorage(FileStorage.Open(path, writable: true));
        using (var image = Qcow2Image.Open(counting, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(3 << 20, data);
        }

        // The data in one write; the rest are metadata (L2 table, refcount block, header), a handful.
        counting.WriteLengths.Count(l => l == 1 << 20).ShouldBe(1);
        counting.WriteLengths.Count.ShouldBeLessThan(8, string.Join(", ", counting.WriteLengths));
        Qemu.AssertClean(path);
        var raw = PathOf("model.raw");
        using (var model = File.Create(raw))
        {
            model.SetLength(32 << 20);
            model.Position = 3 << 20;
            model.Write(data);
        }

        Qemu.Compare(path, raw).ExitCode.ShouldBe(0);
    }

    [Test]
    public void Clusters_rewritten_in_place_take_one_data_write_per_stretch_of_adjacent_host_clusters()
    {
        const int c = 4096;
        var path = PathOf("inplace.qcow2");
        var raw = PathOf("model.raw");
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 8 << 20, ClusterSize = c }))
        {
            // Guest clusters 0-15 and 16-31 land in two stretches of host clusters: cluster 40 was
            // allocated between them.
            image.Write(0, RandomBytes(16 * c, 1));
            image.Write(40 * c, RandomBytes(c, 2));
            image.Write(16 * c, RandomBytes(16 * c, 3));
        }

        var data = RandomBytes(33 * c, 4); // clusters 0-31 again, and cluster 32 fresh
        var counting = new CountingStorage(FileStorage.Open(path, writable: true));
        using (var image = Qcow2Image.Open(counting, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, data);
        }

        counting.WriteLengths.Count(l => l == 16 * c).ShouldBe(2, string.Join(", ", counting.WriteLengths));
        // Cluster 32 alone, its L2 table and its refcount block; cluster by cluster the rewrite made 32 more.
        counting.WriteLengths.Count(l => l == c).ShouldBeLessThanOrEqualTo(3, string.Join(", ", counting.WriteLengths));
        Qemu.AssertClean(path);
        using (var model = File.Create(raw))
        {
            model.SetLength(8 << 20);
            model.Position = 40 * c;
            model.Write(RandomBytes(c, 2));
            model.Position = 0;
            model.Write(data);
        }

        Qemu.Compare(path, raw).ExitCode.ShouldBe(0);
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [TestCase(65536, "1.1", false)]
    [TestCase(4096, "1.1", false)]
    [TestCase(65536, "1.1", true)]
    [TestCase(65536, "0.10", false)]
    public void A_write_over_mixed_clusters_reads_in_qemu_as_the_same_bytes(int clusterSize, string compat, bool extendedL2)
    {
        // Before: a compressed cluster, an allocated one (rewritten in place), a zero cluster, a
        // partly written subcluster range, then nothing; one write of 24 clusters covers them all,
        // with one cluster of zeros in the middle and a partial cluster at each end.
        var path = PathOf("mixed.qcow2");
        var raw = PathOf("model.raw");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", $"cluster_size={clusterSize},compat={compat},extended_l2={(extendedL2 ? "on" : "off")}", path, "8M");
        Qemu.Img("create", "-q", "-f", "raw", raw, "8M");
        var c = clusterSize;
        string[] before = [$"write -P 0x61 {c} {c}", $"write -P 0x62 {3 * c} {c}", $"write -P 0x63 {6 * c} 2048"];
        Qemu.Io(path, before);
        Qemu.IoFormat("raw", raw, before);
        if (compat == "1.1")
        {
            Qemu.Io(path, $"write -z {5 * c} {c}");
        }

        Qemu.Img("convert", "-c", "-O", "qcow2", "-o", $"cluster_size={clusterSize},compat={compat},extended_l2={(extendedL2 ? "on" : "off")}", path, PathOf("c.qcow2"));
        File.Move(PathOf("c.qcow2"), path, overwrite: true);
        Qemu.Io(path, $"write -P 0x62 {3 * c} {c}"); // allocated again, uncompressed: written in place

        var data = new byte[(24 * c) - 1000];
        new Random(c).NextBytes(data);
        Array.Clear(data, (10 * c) - 500, c); // one whole cluster of zeros inside the write
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(500, data);
        }

        using (var model = new FileStream(raw, FileMode.Open, FileAccess.Write))
        {
            model.Position = 500;
            model.Write(data);
        }

        Qemu.AssertClean(path);
        Qemu.Compare(path, raw).ExitCode.ShouldBe(0);
    }

    [Test]
    public void Runs_fill_free_holes_as_qemu_does_instead_of_growing_the_file()
    {
        // 512-byte clusters and scattered free space: a run needs contiguous free clusters, so an
        // unbounded run skipped every hole and grew the file by 5 MB; runs end at the L2 table.
        var ours = PathOf("ours.qcow2");
        var theirs = PathOf("qemu.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", ours, "12M");
        Qemu.Io(ours, "write -P 3 64k 64k", "write -P 4 3M 1M", "write -z 5M 512k", "write -P 5 9M 10k", "discard 3M 512k");
        File.Copy(ours, theirs);
        Qemu.Io(theirs, "write -P 7 0 10M");
        using (var image = Qcow2Image.Open(ours, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, Enumerable.Repeat((byte)7, 10 << 20).ToArray());
        }

        Qemu.AssertClean(ours);
        Qemu.Compare(ours, theirs, "qcow2", "qcow2").ExitCode.ShouldBe(0);
        new FileInfo(ours).Length.ShouldBeLessThanOrEqualTo(new FileInfo(theirs).Length + (64 << 10));
    }
}
