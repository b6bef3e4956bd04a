using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 4, acceptance 3: a dedup image is ordinary qcow2 to QEMU. qemu-io reads it and writes
/// it (over shared clusters too); QEMU's write clears the auto-clear bit, so our next read-write
/// open ignores the old index (whose clusters QEMU may have reused), keeps every byte, repairs
/// the flags QEMU left on shared clusters, and leaves an image qemu-img check finds clean.
/// </summary>
[TestFixture]
[Category("Interop")]
public class DedupQemuRoundTripTests : TempDirectoryFixture
{
    private const int ClusterSize = 65536;
    private const long DiskSize = 16L << 20;
    private const ulong DedupBit = 1UL << 60;

    [Test]
    public void Qemu_reads_and_writes_a_dedup_image_and_our_next_open_distrusts_the_old_index()
    {
        var path = PathOf("rt.qcow2");
        var model = new SparseModel(DiskSize);
        var a = Fill(0x11);
        var b = Fill(0x22);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize, ClusterSize = ClusterSize }.WithDedup()))
        {
            foreach (var cluster in new[] { 0, 1, 2, 3, 10 })
            {
                Write(image, model, cluster, a); // A: five references to one cluster
            }

            Write(image, model, 4, b); // B: two references
            Write(image, model, 5, b);
            Write(image, model, 6, DedupOracle.Pattern(6, ClusterSize));
            Write(image, model, 7, DedupOracle.Pattern(7, ClusterSize)); // C: two references, one of which QEMU overwrites
            Write(image, model, 8, DedupOracle.Pattern(7, ClusterSize));
            image.GetDedupStatistics().UniqueClusters.ShouldBe(4);
        }

        ((ulong)ImagePatch.ReadHeader(path).Header.Autoclear & DedupBit).ShouldNotBe(0UL);
        DedupOracle.AssertCleanAndEqual(path, WriteRaw(model, "before.raw"));
        Qemu.Io(path, "read -P 0x11 0 256k", "read -P 0x22 256k 128k", "read -P 0x11 640k 64k");

        // QEMU overwrites shared clusters whole and in part, frees B's cluster entirely (leaving
        // it free for reuse), writes fresh data that lands in freed clusters and the old index's
        // refcount-0 areas, and writes A's bytes again.
        Qemu.Io(path, "write -P 0x33 0 64k", "write -P 0x44 70000 1000", "write -P 0x55 256k 128k", "write -P 0x66 1M 2M", "write -P 0x11 4M 64k", "write -P 0x77 448k 64k");
        Fill(model, 0, 65536, 0x33);
        Fill(model, 70000, 1000, 0x44);
        Fill(model, 256 * 1024, 128 * 1024, 0x55);
        Fill(model, 1 << 20, 2 << 20, 0x66);
        Fill(model, 4 << 20, 65536, 0x11);
        Fill(model, 448 * 1024, 65536, 0x77);
        ((ulong)ImagePatch.ReadHeader(path).Header.Autoclear & DedupBit).ShouldBe(0UL, "QEMU clears auto-clear bits it does not know");
        var afterQemu = Qemu.Check(path);
        TestContext.Out.WriteLine($"after qemu-io: {afterQemu.Corruptions} corruptions, {afterQemu.Leaks} leaks\n{afterQemu.Text}");
        afterQemu.Leaks.ShouldBe(0);
        Qemu.Compare(path, WriteRaw(model, "after-qemu.raw")).ExitCode.ShouldBe(0);

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            var index = image.GetExtension<DedupExtension>()!.Index!;
            index.StaleReason.ShouldNotBeNull();
            index.StaleReason.ShouldContain("auto-clear bit");
            index.LogStore.Count.ShouldBe(0, "nothing of the old index is trusted");
            DedupOracle.AssertReadsModel(image, model);

            // B's old entry named a cluster QEMU freed and may have reused: writing B must store it anew.
            Write(image, model, 100, b);
            Write(image, model, 101, b);
            Write(image, model, 102, a);
            Write(image, model, 103, Fill(0x66));
            HostOf(image, 101).ShouldBe(HostOf(image, 100), "the fresh index deduplicates new writes");
            DedupOracle.AssertReadsModel(image, model);
        }

        ((ulong)ImagePatch.ReadHeader(path).Header.Autoclear & DedupBit).ShouldNotBe(0UL);
        DedupOracle.AssertCleanAndEqual(path, WriteRaw(model, "final.raw"));
    }

    [Test]
    public void A_read_write_open_without_the_extension_makes_the_index_stale()
    {
        var path = PathOf("plain.qcow2");
        var a = Fill(0x17);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize, ClusterSize = ClusterSize }.WithDedup()))
        {
            image.Write(0, a);
        }

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(ClusterSize, a); // a writer that does not maintain the index
            image.Info.AutoclearFeatures.ShouldBe(default(AutoclearFeatures));
        }

        ((ulong)ImagePatch.ReadHeader(path).Header.Autoclear & DedupBit).ShouldBe(0UL);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions().WithDedup()))
        {
            image.GetDedupStatistics().State.ShouldBe(DedupIndexState.Stale, "read-only: reported, not rebuilt");
        }

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup()))
        {
            image.GetDedupStatistics().State.ShouldBe(DedupIndexState.Active, "read-write: a fresh index starts");
        }

        Qemu.AssertClean(path);
    }

    private static byte[] Fill(byte value)
    {
        var bytes = new byte[ClusterSize];
        bytes.AsSpan().Fill(value);
        return bytes;
    }

    private static void Fill(SparseModel model, long offset, int length, byte value)
    {
        var bytes = new byte[length];
        bytes.AsSpan().Fill(value);
        model.Write(offset, bytes);
    }

    private static void Write(Qcow2Image image, SparseModel model, int cluster, byte[] data)
    {
        image.Write((long)cluster * ClusterSize, data);
        model.Write((long)cluster * ClusterSize, data);
    }

    private static long? HostOf(Qcow2Image image, int cluster) => image.GetExtents((long)cluster * ClusterSize, ClusterSize)[0].HostOffset;


    private string WriteRaw(SparseModel model, string name)
    {
        var raw = PathOf(name);
        model.WriteRaw(raw);
        return raw;
    }
}
