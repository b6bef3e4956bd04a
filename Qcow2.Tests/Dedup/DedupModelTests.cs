using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 4, acceptance 2: random full and partial writes of a small pool of contents through the
/// Stream API, rewrites of contents that were overwritten or discarded earlier (the stale-entry
/// trap), overwrites of shared and unshared clusters, discards and reopens. The content always
/// equals the model, a reopened image keeps deduplicating, and the image checks clean.
/// </summary>
[TestFixture]
[Category("Interop")]
public class DedupModelTests : TempDirectoryFixture
{
    private const int Pool = 10;

    [TestCase(4096, 1200, null)]
    [TestCase(65536, 800, null)]
    [TestCase(4096, 1500, 3)] // a tiny log store: entries freeze and age out while the model runs
    public void Random_dedup_workload_matches_the_model_and_stays_clean(int clusterSize, int operations, int? logStoreOrder)
    {
        var clusters = 96;
        var size = (long)clusters * clusterSize;
        var path = PathOf("dedup.qcow2");
        var model = new SparseModel(size);
        var random = new Random(clusterSize + operations);
        var dedup = new DedupOptions { LogStoreOrder = logStoreOrder, MaxIncarnations = 3 };
        var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize }.WithDedup(dedup));
        var stream = image.OpenStream();
        try
        {
            StaleEntryTrap(stream, model, clusterSize);
            for (var i = 0; i < operations; i++)
            {
                var cluster = random.Next(clusters);
                var offset = (long)cluster * clusterSize;
                switch (random.Next(20))
                {
                    case < 11: // a whole cluster from the pool: the common duplicate
                        Write(stream, model, offset, DedupOracle.Pattern(random.Next(Pool), clusterSize));
                        break;
                    case < 14: // a partial write into a (possibly shared) cluster
                        var length = random.Next(1, clusterSize);
                        var at = offset + random.Next(clusterSize - length + 1);
                        var bytes = new byte[length];
                        random.NextBytes(bytes);
                        Write(stream, model, at, bytes);
                        break;
                    case < 16: // a pool pattern across two clusters: neither whole cluster is a pool content
                        if (cluster + 1 < clusters)
                        {
                            Write(stream, model, offset + (clusterSize / 2), DedupOracle.Pattern(random.Next(Pool), clusterSize));
                        }

                        break;
                    case < 18:
                        var count = random.Next(1, 4);
                        image.Discard(offset, Math.Min(count, clusters - cluster) * (long)clusterSize);
                        model.Zero(offset, Math.Min(count, clusters - cluster) * (long)clusterSize);
                        break;
                    case 18:
                        stream.Flush();
                        break;
                    default:
                        (image, stream) = Reopen(image, stream, path, dedup);
                        DedupOracle.AssertReadsModel(stream, model, $"after reopen at operation {i}");
                        break;
                }
            }

            DedupOracle.AssertReadsModel(stream, model, "at the end");
            AssertStillDeduplicatesAfterReopen(ref image, ref stream, path, dedup, model, clusterSize);
            image.Check().IsClean.ShouldBeTrue();
        }
        finally
        {
            stream.Dispose();
            image.Dispose();
        }

        var raw = PathOf("model.raw");
        model.WriteRaw(raw);
        DedupOracle.AssertCleanAndEqual(path, raw);
    }

    /// <summary>
    /// The classic stale-entry sequence: index content A at a cluster, overwrite and discard it so its
    /// host cluster is freed and reused for other bytes, then write A again elsewhere.
    /// </summary>
    private static void StaleEntryTrap(Qcow2Stream stream, SparseModel model, int clusterSize)
    {
        var a = DedupOracle.Pattern(1000, clusterSize);
        Write(stream, model, 0, a);
        Write(stream, model, 0, DedupOracle.Pattern(1001, clusterSize)); // whole rewrite: A's cluster is freed
        stream.Image.Discard(0, clusterSize);
        model.Zero(0, clusterSize);
        for (var i = 0; i < 4; i++)
        {
            Write(stream, model, (long)(1 + i) * clusterSize, DedupOracle.Pattern(1002 + i, clusterSize)); // reuse freed clusters
        }

        Write(stream, model, 6L * clusterSize, a); // must not share a cluster that now holds other bytes
        DedupOracle.AssertReadsModel(stream, model, "after the stale-entry trap");
    }

    private static void AssertStillDeduplicatesAfterReopen(ref Qcow2Image image, ref Qcow2Stream stream, string path, DedupOptions dedup, SparseModel model, int clusterSize)
    {
        var known = DedupOracle.Pattern(7, clusterSize);
        Write(stream, model, 0, known);
        (image, stream) = Reopen(image, stream, path, dedup);
        var before = image.GetDedupStatistics().UniqueClusters;
        Write(stream, model, 5L * clusterSize, known);
        image.GetDedupStatistics().UniqueClusters.ShouldBeLessThanOrEqualTo(before, "content written before the reopen must still be shared");
        var extents = image.GetExtents(0, 6L * clusterSize);
        extents.First(e => e.Start <= 5L * clusterSize && e.End > 5L * clusterSize).HostOffset
            .ShouldBe(extents.First(e => e.Start == 0).HostOffset);
    }

    private static (Qcow2Image, Qcow2Stream) Reopen(Qcow2Image image, Qcow2Stream stream, string path, DedupOptions dedup)
    {
        stream.Dispose();
        image.Dispose();
        var reopened = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup(dedup));
        reopened.GetExtension<DedupExtension>()!.State.ShouldBe(DedupIndexState.Active);
        return (reopened, reopened.OpenStream());
    }

    private static void Write(Stream stream, SparseModel model, long offset, byte[] data)
    {
        var length = (int)Math.Min(data.Length, model.Size - offset);
        stream.Position = offset;
        stream.Write(data, 0, length);
        model.Write(offset, data.AsSpan(0, length));
    }

}
