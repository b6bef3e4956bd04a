using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// The dedup extension is loaded for every image the CLI opens; only an image with an active index
/// gets its allocator. Before, a plain image written through the CLI hashed every cluster with
/// SHA-256 for nothing (55% of the time of `qcow2 bench -w`).
/// </summary>
[TestFixture]
public class AllocatorChoiceTests : TempDirectoryFixture
{
    [Test]
    public void A_plain_image_opened_with_the_extension_keeps_fresh_clusters()
    {
        var path = PathOf("plain.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup(new DedupOptions { Enable = false }));
        image.GetExtension<DedupExtension>()!.State.ShouldBe(DedupIndexState.Absent);
        image.WritableState!.Allocator.ShouldBeSameAs(FreshClusterAllocator.Instance);
    }

    [Test]
    public void A_dedup_image_gets_the_dedup_allocator()
    {
        var path = PathOf("dedup.qcow2");
        using (Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 4 << 20 }.WithDedup()))
        {
        }

        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup());
        image.GetExtension<DedupExtension>()!.State.ShouldBe(DedupIndexState.Active);
        image.WritableState!.Allocator.SharesClusters.ShouldBeTrue();
    }
}
