using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 4, acceptance 1 and 8: a raw image whose distinct non-zero cluster contents are known
/// deduplicates to exactly that many host clusters — by convert -o dedup=on, and by qcow2 dedup
/// on an image qemu-img made.
/// </summary>
[TestFixture]
[Category("Interop")]
public class KnownAnswerTests : TempDirectoryFixture
{
    [TestCase(4096)]
    [TestCase(65536)]
    public void Convert_with_dedup_stores_each_distinct_cluster_once(int clusterSize)
    {
        var (raw, distinct) = BuildDataset(clusterSize);
        var image = PathOf("dedup.qcow2");
        var cli = CliRunner.Run("convert", "-O", "qcow2", "-o", $"dedup=on,cluster_size={clusterSize}", raw, image);
        cli.ExitCode.ShouldBe(0, cli.Error);
        cli.Output.ShouldContain("Deduplication:");

        DedupOracle.HostDataClusters(image, clusterSize).ShouldBe(distinct);
        DedupOracle.AssertCleanAndEqual(image, raw);
    }

    [TestCase(4096)]
    [TestCase(65536)]
    public void Offline_dedup_of_a_qemu_made_image_shrinks_data_clusters_to_the_ideal_count(int clusterSize)
    {
        var (raw, distinct) = BuildDataset(clusterSize);
        var image = PathOf("qemu.qcow2");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", $"cluster_size={clusterSize}", raw, image);
        DedupOracle.HostDataClusters(image, clusterSize).ShouldBeGreaterThan(distinct);

        var cli = CliRunner.Run("dedup", image);
        cli.ExitCode.ShouldBe(0, cli.Error);
        cli.Output.ShouldContain("now share another cluster");

        DedupOracle.HostDataClusters(image, clusterSize).ShouldBe(distinct);
        DedupOracle.AssertCleanAndEqual(image, raw);
        var again = CliRunner.Run("dedup", image);
        again.Output.ShouldContain(" 0 now share another cluster");
    }

    /// <summary>
    /// Distinct contents with known multiplicities: neighbours, far apart, across an L2 table
    /// boundary, copies of cluster 0, zero runs and unique random clusters.
    /// </summary>
    private (string Path, int Distinct) BuildDataset(int clusterSize)
    {
        var l2Coverage = (long)clusterSize * (clusterSize / 8);
        var clusters = (2 * l2Coverage / clusterSize) + 64;
        var placements = new Dictionary<long, int>(); // cluster index -> pattern (0 = zeros)
        void Put(int pattern, params long[] at)
        {
            foreach (var index in at)
            {
                placements[index] = pattern;
            }
        }

        var boundary = l2Coverage / clusterSize;
        Put(1, 0, 7, clusters - 1, boundary + 3);                 // copies of cluster 0
        Put(2, 1, 2, 3, 4);                                         // neighbours
        Put(3, 10, clusters - 10);                                  // far apart
        Put(4, boundary - 1, boundary, boundary + 1);               // across an L2 table boundary
        Put(5, 20, 21, 40, 41, boundary + 20);
        Put(0, 30, 31, 32, 33, 34, 35);                             // zero runs
        for (var i = 0; i < 12; i++)
        {
            Put(100 + i, 50 + i);                                   // unique clusters
        }

        var raw = PathOf($"dataset-{clusterSize}.raw");
        using (var file = new FileStream(raw, FileMode.Create))
        {
            file.SetLength(clusters * clusterSize);
            foreach (var (index, pattern) in placements)
            {
                file.Position = index * clusterSize;
                file.Write(pattern == 0 ? new byte[clusterSize] : DedupOracle.Pattern(pattern, clusterSize));
            }
        }

        return (raw, placements.Values.Where(p => p != 0).Distinct().Count());
    }
}
