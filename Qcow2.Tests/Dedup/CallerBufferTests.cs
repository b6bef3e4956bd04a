using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// A dedup write hashes a cluster and stores it; the two must see the same bytes. The image's own
/// copies (the span overloads, convert's buffers) are stored as hashed; memory the caller still
/// holds is copied first, so a caller that changes it mid-write cannot plant an index entry whose
/// hash does not match the cluster it names.
/// </summary>
[TestFixture]
public class CallerBufferTests : TempDirectoryFixture
{
    private const int ClusterSize = 4096;

    [Test]
    public async Task A_caller_changing_its_memory_during_an_async_write_cannot_make_the_index_lie()
    {
        var path = PathOf("changing.qcow2");
        using (Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = ClusterSize }.WithDedup()))
        {
        }

        var original = Cluster(1);
        var callers = original.ToArray();
        var storage = new CountingStorage(FileStorage.Open(path, writable: true));
        using (var image = Qcow2Image.Open(storage, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            // The caller scribbles on its buffer while the data write is under way.
            storage.BeforeWrite = (_, length) =>
            {
                if (length == ClusterSize)
                {
                    callers[0] ^= 0xFF;
                }
            };
            await image.WriteAsync(0, callers);
            storage.BeforeWrite = null;

            // The same bytes again, from a buffer nobody touches: shared with what was hashed above.
            await image.WriteAsync(ClusterSize, original.ToArray());
            image.GetDedupStatistics().ClustersDeduplicated.ShouldBe(1);
            var read = new byte[ClusterSize];
            image.Read(ClusterSize, read);
            read.ShouldBe(original, "the shared cluster holds the bytes its hash says");
            image.Read(0, read);
            read.ShouldBe(original);
        }

        Qemu.AssertClean(path);
    }

    [Test]
    public void Span_writes_are_stored_from_the_images_own_copy_and_still_share()
    {
        var path = PathOf("spans.qcow2");
        using var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = ClusterSize }.WithDedup());
        var cluster = Cluster(2);
        for (var i = 0; i < 8; i++)
        {
            image.Write((long)i * ClusterSize, cluster.AsSpan());
        }

        image.GetDedupStatistics().ClustersDeduplicated.ShouldBe(7);
        var read = new byte[ClusterSize];
        for (var i = 0; i < 8; i++)
        {
            image.Read((long)i * ClusterSize, read);
            read.ShouldBe(cluster);
        }
    }

    private static byte[] Cluster(int seed)
    {
        var cluster = new byte[ClusterSize];
        new Random(seed).NextBytes(cluster);
        return cluster;
    }
}
