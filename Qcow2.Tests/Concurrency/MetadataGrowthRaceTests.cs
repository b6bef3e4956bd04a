using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Concurrency;

/// <summary>
/// The overlap guard before every guest data write runs outside the metadata lock while other
/// writers add L2 tables, refcount blocks and grow the refcount table under it. The guard must
/// read a consistent picture (never a table being changed) and never refuse a legitimate write.
/// </summary>
[TestFixture]
[Category("Interop")]
public class MetadataGrowthRaceTests : TempDirectoryFixture
{
    [Test]
    public void Data_writes_race_with_new_L2_tables_and_refcount_blocks([Values] bool async)
    {
        const int clusterSize = 4096;         // an L2 table covers 2 MiB, a refcount block 8 MiB of host
        const int threads = 8;
        const int writesPerThread = 300;
        const long l2Coverage = 2L << 20;
        var path = PathOf("growth.qcow2");
        var size = l2Coverage * writesPerThread;
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize }))
        {
            var tasks = Enumerable.Range(0, threads).Select(t => Task.Run(async () =>
            {
                var data = new byte[clusterSize * 2];
                new Random(t).NextBytes(data);
                for (var i = 0; i < writesPerThread; i++)
                {
                    // Every thread's i-th write lands in the i-th L2 range: tables are created while
                    // the other threads' data writes consult the overlap index.
                    var offset = (i * l2Coverage) + (t * 3L * clusterSize);
                    if (async)
                    {
                        await image.WriteAsync(offset, data);
                    }
                    else
                    {
                        image.Write(offset, data);
                    }
                }
            })).ToArray();
            Should.NotThrow(() => Task.WaitAll(tasks, TimeSpan.FromSeconds(300)).ShouldBeTrue("the writers hung"));

            for (var t = 0; t < threads; t++)
            {
                var expected = new byte[clusterSize * 2];
                new Random(t).NextBytes(expected);
                var actual = new byte[expected.Length];
                image.Read(((writesPerThread - 1) * l2Coverage) + (t * 3L * clusterSize), actual);
                actual.ShouldBe(expected);
            }
        }

        Qemu.AssertClean(path);
    }
}
