using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

[TestFixture]
[Category("Interop")]
public class DedupSmokeTests : TempDirectoryFixture
{
    [Test]
    public void Duplicate_clusters_share_and_survive_reopen()
    {
        var path = PathOf("d.qcow2");
        var a = new byte[65536];
        var b = new byte[65536];
        new Random(1).NextBytes(a);
        new Random(2).NextBytes(b);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 16 << 20 }.WithDedup()))
        {
            for (var i = 0; i < 8; i++)
            {
                image.Write(i * 65536L, i % 2 == 0 ? a : b);
            }

            var stats = image.GetDedupStatistics();
            TestContext.Out.WriteLine(stats);
            stats.UniqueClusters.ShouldBe(2);
            stats.References.ShouldBe(8);
        }

        Qemu.AssertClean(path);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            image.GetExtension<DedupExtension>()!.State.ShouldBe(DedupIndexState.Active);
            image.Write(20 * 65536L, a);
            var stats = image.GetDedupStatistics();
            TestContext.Out.WriteLine(stats);
            stats.UniqueClusters.ShouldBe(2);
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0 1M 64k");
    }
}
