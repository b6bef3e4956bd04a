using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Concurrency;

/// <summary>
/// Sharing a cluster changes the COPIED flag of another guest cluster's L2 entry (its sole
/// referrer), and dropping a share sets it again, while another writer may hold that guest
/// cluster's range lock and be about to relink it. Such a writer must not fail or leak.
/// </summary>
[TestFixture]
[Category("Interop")]
public class SharedClusterRaceTests : TempDirectoryFixture
{
    [Test]
    public void Writers_relinking_clusters_that_others_share_meanwhile_succeed([Values] bool async)
    {
        const int clusterSize = 4096;
        const int clusters = 8;
        var path = PathOf("race.qcow2");
        var contents = Enumerable.Range(0, 3).Select(i =>
        {
            var bytes = new byte[clusterSize];
            new Random(i + 1).NextBytes(bytes);
            return bytes;
        }).ToArray();
        var written = new byte[clusters][];
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = clusters * clusterSize, ClusterSize = clusterSize }.WithDedup()))
        {
            // Each thread owns two clusters (so the last content written to each is known) and
            // writes the same few contents as everyone else: every write shares, unshares or
            // relinks clusters whose sole referrer another thread is rewriting right now.
            var tasks = Enumerable.Range(0, 4).Select(t => Task.Run(async () =>
            {
                var random = new Random(t);
                for (var i = 0; i < 3000; i++)
                {
                    var cluster = (2 * t) + random.Next(2);
                    var content = contents[random.Next(contents.Length)];
                    if (async)
                    {
                        await image.WriteAsync((long)cluster * clusterSize, content);
                    }
                    else
                    {
                        image.Write((long)cluster * clusterSize, content);
                    }

                    written[cluster] = content;
                }
            })).ToArray();

            Should.NotThrow(() => Task.WaitAll(tasks, TimeSpan.FromSeconds(120)).ShouldBeTrue("the writers hung"));
            for (var cluster = 0; cluster < clusters; cluster++)
            {
                var actual = new byte[clusterSize];
                image.Read((long)cluster * clusterSize, actual);
                actual.ShouldBe(written[cluster], $"cluster {cluster}");
            }
        }

        Qemu.AssertClean(path);
    }
}
