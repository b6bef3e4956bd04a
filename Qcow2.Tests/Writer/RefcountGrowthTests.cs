using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>Issue 3, acceptance 5: the refcount table grows (repeatedly, counting itself) and stays clean.</summary>
[TestFixture]
[Category("Interop")]
public class RefcountGrowthTests : TempDirectoryFixture
{
    [Test]
    public void Writing_many_512_byte_clusters_with_64_bit_refcounts_grows_the_refcount_table_several_times()
    {
        // One 512-byte refcount table cluster points at 64 blocks of 64 refcounts: 2 MiB of image.
        var path = PathOf("growth.qcow2");
        var model = new SparseModel(24 << 20);
        var growths = new List<int>();
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 24 << 20, ClusterSize = 512, RefcountBits = 64 }))
        {
            var random = new Random(8);
            var chunk = new byte[256 * 1024];
            for (var offset = 0L; offset < (20 << 20); offset += chunk.Length)
            {
                random.NextBytes(chunk);
                image.Write(offset, chunk);
                model.Write(offset, chunk);
                var clusters = image.Header.Header.RefcountTableClusters;
                if (growths.Count == 0 || growths[^1] != clusters)
                {
                    growths.Add(clusters);
                }
            }
        }

        growths.Count.ShouldBeGreaterThanOrEqualTo(4, $"refcount table sizes seen: {string.Join(", ", growths)}");
        Qemu.AssertClean(path);
        var raw = PathOf("model.raw");
        model.WriteRaw(raw);
        Qemu.Compare(path, raw).ExitCode.ShouldBe(0);
        using var reopened = Qcow2Image.Open(path);
        reopened.Check().IsClean.ShouldBeTrue();
    }

    [Test]
    public void Freed_space_is_reused_before_the_file_grows()
    {
        var path = PathOf("reuse.qcow2");
        using var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64 << 20 });
        var data = new byte[4 << 20];
        new Random(2).NextBytes(data);
        image.Write(0, data);
        image.Flush();
        var length = new FileInfo(path).Length;
        image.Discard(0, data.Length);
        image.Flush(); // the unmapping is durable: the freed clusters may be reused
        image.Write(32 << 20, data);
        image.Flush();
        new FileInfo(path).Length.ShouldBeLessThanOrEqualTo(length + (2 * 65536));
    }

    [Test]
    public void Freed_space_is_not_reused_before_its_unmapping_is_flushed()
    {
        // Reusing it earlier could, after a crash, bring the old L2 entry back over someone else's data.
        var path = PathOf("quarantine.qcow2");
        using var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64 << 20 });
        var data = new byte[1 << 20];
        new Random(2).NextBytes(data);
        image.Write(0, data);
        image.Flush();
        var before = image.GetMap(0, data.Length).Where(m => m.Offset is not null).ToList();
        before.ShouldNotBeEmpty();
        image.Discard(0, data.Length);
        image.Write(32 << 20, data);
        var after = image.GetMap(32 << 20, data.Length).Where(m => m.Offset is not null).ToList();
        after.ShouldNotBeEmpty();
        foreach (var reused in after)
        {
            before.ShouldAllBe(freed => reused.Offset >= freed.Offset + freed.Length || reused.Offset + reused.Length <= freed.Offset);
        }
    }
}
