using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>Issue 3, acceptance 6: the cluster allocator seam's contract, through a test allocator.</summary>
[TestFixture]
[Category("Interop")]
public class AllocatorSeamTests : TempDirectoryFixture
{
    private const int Cluster = 65536;
    private SharingTestAllocator _allocator = null!;
    private string _path = string.Empty;

    [SetUp]
    public void Reset()
    {
        _allocator = new SharingTestAllocator();
        _path = PathOf("image.qcow2");
    }

    [Test]
    public void Identical_clusters_share_one_host_cluster_with_copied_clear()
    {
        using (var image = Create())
        {
            var content = Pattern(1);
            for (var i = 0; i < 3; i++)
            {
                image.Write(i * (long)Cluster, content);
            }

            var hosts = image.GetExtents(0, 3L * Cluster).Select(e => e.HostOffset).Distinct().ToList();
            hosts.Count.ShouldBe(1);
            using (image.Session.Metadata.MetadataLock.AcquireAsync(async: false, CancellationToken.None).AsTask().Result)
            {
                image.Session.Metadata.GetRefcountLocked(hosts[0]!.Value).ShouldBe(3UL);
            }
            _allocator.Resolutions.Count(r => r.Shared).ShouldBe(2);
            _allocator.Resolutions.ShouldAllBe(r => r.Placement.Tag == SharingTestAllocator.HitTag); // handed back as answered
        }

        Qemu.AssertClean(_path);
        ReadCluster(0).ShouldBe(Pattern(1));
        ReadCluster(2).ShouldBe(Pattern(1));
    }

    [Test]
    public void Write_over_shared_cluster_copies_and_keeps_other_referrer()
    {
        using (var image = Create())
        {
            image.Write(0, Pattern(1));
            image.Write(Cluster, Pattern(1));
            image.Write(Cluster + 100, new byte[] { 9, 9, 9 });
            var extents = image.GetExtents(0, 2L * Cluster);
            extents.Count.ShouldBe(2);
            extents[0].HostOffset.ShouldNotBe(extents[1].HostOffset);
        }

        Qemu.AssertClean(_path);
        ReadCluster(0).ShouldBe(Pattern(1));
        var changed = Pattern(1);
        changed[100] = changed[101] = changed[102] = 9;
        ReadCluster(1).ShouldBe(changed);
    }

    [Test]
    public void Shared_cluster_dropping_to_one_referrer_gets_copied_set_again()
    {
        using (var image = Create())
        {
            image.Write(0, Pattern(1));
            image.Write(Cluster, Pattern(1));
            image.Write(Cluster, Pattern(2));
        }

        L2EntryOf(0).IsCopied.ShouldBeTrue();
        Qemu.AssertClean(_path);
    }

    [Test]
    public void The_allocator_is_told_of_frees_and_in_place_overwrites()
    {
        using var image = Create();
        image.Write(0, Pattern(1));
        var host = image.GetExtents(0, Cluster)[0].HostOffset!.Value;
        image.Write(10, new byte[] { 1 });
        _allocator.InPlaceRequests.ShouldContain((host, 0L));
        image.Discard(0, Cluster);
        _allocator.Freed.ShouldContain(host);
    }

    [Test]
    public void Refusing_in_place_makes_the_image_place_the_rewrite_elsewhere_and_free_the_old_cluster()
    {
        _allocator.AllowInPlace = false;
        using (var image = Create())
        {
            image.Write(0, Pattern(1));
            var before = image.GetExtents(0, Cluster)[0].HostOffset;
            image.Write(10, new byte[] { 7 });
            image.GetExtents(0, Cluster)[0].HostOffset.ShouldNotBe(before);
            _allocator.Freed.ShouldContain(before!.Value);
        }

        Qemu.AssertClean(_path);
        ReadCluster(0)[10].ShouldBe((byte)7);
    }

    [TestCase("unallocated")]
    [TestCase("metadata")]
    [TestCase("unaligned")]
    [TestCase("wrong referrer")]
    public void Bad_existing_cluster_answers_are_rejected(string kind)
    {
        using (var image = Create())
        {
            image.Write(0, Pattern(1));
            var host = image.GetExtents(0, Cluster)[0].HostOffset!.Value;
            _allocator.ForcedAnswer = kind switch
            {
                "unallocated" => ClusterPlacement.Existing(host + (100L * Cluster), 0),
                "metadata" => ClusterPlacement.Existing(image.Header.Header.L1TableOffset, 0),
                "unaligned" => ClusterPlacement.Existing(host + 512, 0),
                _ => ClusterPlacement.Existing(host, 5L * Cluster),
            };
            image.Write(3L * Cluster, Pattern(2));
            _allocator.Resolutions[^1].Shared.ShouldBeFalse();
        }

        Qemu.AssertClean(_path);
        ReadCluster(0).ShouldBe(Pattern(1));
        ReadCluster(3).ShouldBe(Pattern(2));
    }

    [Test]
    public void Sharing_stops_at_the_refcount_maximum()
    {
        using (var image = Create(refcountBits: 2))
        {
            for (var i = 0; i < 5; i++)
            {
                image.Write(i * (long)Cluster, Pattern(1));
            }

            image.GetExtents(0, 5L * Cluster).Select(e => e.HostOffset).Distinct().Count().ShouldBe(2);
            image.Check().IsClean.ShouldBeTrue();
        }

        Qemu.AssertClean(_path);
    }

    [Test]
    public void Concurrent_writers_of_identical_content_stay_consistent()
    {
        using (var image = Create(size: 64L << 20))
        {
            Parallel.For(0, 256, i => image.Write(i * (long)Cluster, Pattern(i % 4)));
            image.Check().IsClean.ShouldBeTrue();
        }

        Qemu.AssertClean(_path);
        for (var i = 0; i < 256; i += 37)
        {
            ReadCluster(i).ShouldBe(Pattern(i % 4));
        }
    }

    private Qcow2Image Create(int refcountBits = 16, long size = 16L << 20) => Qcow2Image.Create(_path, new Qcow2CreateOptions
    {
        Size = size,
        RefcountBits = refcountBits,
        OpenOptions = new Qcow2OpenOptions { Allocator = _allocator },
    });

    private byte[] ReadCluster(int index)
    {
        using var image = Qcow2Image.Open(_path);
        var buffer = new byte[Cluster];
        image.Read(index * (long)Cluster, buffer);
        return buffer;
    }

    private L2Entry L2EntryOf(long guestOffset) => new(ImagePatch.ReadU64(_path, ImagePatch.L2EntryOffset(_path, guestOffset)));

    private static byte[] Pattern(int seed)
    {
        var bytes = new byte[Cluster];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
