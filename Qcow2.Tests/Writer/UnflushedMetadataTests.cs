using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Between flushes, L2 tables and refcount blocks are allocated in the file but still only in the
/// caches, past the file's physical end. Mapping, reading and writing must treat them as part of
/// the image, and nothing written may be lost.
/// </summary>
[TestFixture]
[Category("Interop")]
public class UnflushedMetadataTests : TempDirectoryFixture
{
    private const long DiskSize = 64L << 20;

    [Test]
    public void Map_and_extents_before_a_flush_see_tables_not_yet_written([Values(4096, 65536)] int clusterSize, [Values] bool mapFirst)
    {
        var path = PathOf("unflushed.qcow2");
        var model = new SparseModel(DiskSize);
        var random = new Random(clusterSize);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize, ClusterSize = clusterSize }))
        {
            void Write(long offset, int length)
            {
                var data = new byte[length];
                random.NextBytes(data);
                image.Write(offset, data);
                model.Write(offset, data);
            }

            void Inspect()
            {
                if (mapFirst)
                {
                    image.GetMap(0, DiskSize).ShouldNotBeEmpty();
                    image.GetExtents(0, DiskSize).ShouldNotBeEmpty();
                }
                else
                {
                    image.GetExtents(0, DiskSize).ShouldNotBeEmpty();
                    image.GetMap(0, DiskSize).ShouldNotBeEmpty();
                }
            }

            Write(0, clusterSize); // the data cluster is written, its L2 table after it is not: past the physical end
            Inspect();
            AssertReads(image, model, 0, 4 * clusterSize);
            Write(clusterSize + 100, 5000);
            Write(40L << 20, clusterSize); // another L2 table, another unwritten tail
            Inspect();
            AssertReads(image, model, 40L << 20, 2 * clusterSize);
            Write((40L << 20) + clusterSize, clusterSize);
            Write(DiskSize - 4096, 4096);
            Inspect();
            AssertReads(image, model, 0, (int)Math.Min(DiskSize, 1 << 20));
            image.Flush();
            Write(20L << 20, 3 * clusterSize);
            Inspect();
        }

        Qemu.AssertClean(path);
        var expected = PathOf("expected.raw");
        model.WriteRaw(expected);
        var compare = Qemu.Compare(path, expected);
        compare.ExitCode.ShouldBe(0, compare.Output + compare.Error);
    }

    private static void AssertReads(Qcow2Image image, SparseModel model, long offset, int length)
    {
        var actual = new byte[length];
        image.Read(offset, actual);
        actual.ShouldBe(model.Read(offset, length));
    }
}
