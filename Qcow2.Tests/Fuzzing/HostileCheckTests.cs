using System.Buffers.Binary;
using System.Diagnostics;
using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>The crashers the fuzzer found in the check, each pinned on its own.</summary>
[TestFixture]
[Category("Interop")]
public class HostileCheckTests : TempDirectoryFixture
{
    private byte[] _image = [];

    [SetUp]
    public void MakeImage()
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create("image.qcow2", 4 << 20);
        builder.Io(path, "write -P 0x5a 0 128k");
        _image = File.ReadAllBytes(path);
    }

    /// <summary>
    /// QEMU masks a refcount table entry with 0xffff_ffff_ffff_fe00: with high bits set it names a
    /// block far outside the image ("refcount block N is outside image"), not a negative offset.
    /// </summary>
    [Test]
    public void Refcount_table_entry_with_high_bits_is_a_block_outside_the_image(
        [Values(0x8000_0000_0000_0000UL, 0x4000_0000_0000_0000UL, 0xffff_0000_0000_0000UL)] ulong entry,
        [Values(CheckRepair.None, CheckRepair.All)] CheckRepair repair)
    {
        var table = BinaryPrimitives.ReadInt64BigEndian(_image.AsSpan(48));
        BinaryPrimitives.WriteUInt64BigEndian(_image.AsSpan((int)table + (5 * 8)), entry);
        using var image = Qcow2Image.Open(new FuzzStorage(_image, _image.Length, writable: repair != CheckRepair.None), new Qcow2OpenOptions { Writable = repair != CheckRepair.None, ForRepair = true });
        var result = image.Check(repair);
        result.Messages.ShouldContain(m => m.Contains("refcount block 5", StringComparison.Ordinal), string.Join("\n", result.Messages));
        if (repair == CheckRepair.None)
        {
            result.Corruptions.ShouldBeGreaterThan(0);
        }
    }

    /// <summary>
    /// QEMU refuses to check a file of more than INT_MAX clusters ("Check failed: File too large");
    /// below that a valid image in a huge sparse file checks clean, in time and memory that follow
    /// the image's metadata, not the file's length.
    /// </summary>
    [TestCase(200L << 40, 512, "File too large")]
    [TestCase(1L << 62, 65536, "File too large")]
    [TestCase(64L << 40, 65536, null)]
    [TestCase(200L << 40, 2 << 20, null)]
    public void Image_in_a_huge_sparse_file(long length, int clusterSize, string? failure)
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create($"sparse-{clusterSize}.qcow2", 4 << 20, $"cluster_size={clusterSize}");
        builder.Io(path, "write -P 0x5a 0 128k");
        var bytes = File.ReadAllBytes(path);
        var clock = Stopwatch.StartNew();
        var before = GC.GetAllocatedBytesForCurrentThread();
        foreach (var repair in new[] { CheckRepair.None, CheckRepair.All })
        {
            using var image = Qcow2Image.Open(new FuzzStorage(bytes, length, writable: repair != CheckRepair.None), new Qcow2OpenOptions { Writable = repair != CheckRepair.None, ForRepair = true, Locking = FileLocking.Off });
            var result = image.Check(repair);
            result.Failure.ShouldBe(failure, string.Join("\n", result.Messages));
            if (failure is null)
            {
                result.Corruptions.ShouldBe(0, string.Join("\n", result.Messages));
                result.Leaks.ShouldBe(0, string.Join("\n", result.Messages));
            }
            else
            {
                result.CheckErrors.ShouldBe(1);
            }
        }

        clock.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(10));
        (GC.GetAllocatedBytesForCurrentThread() - before).ShouldBeLessThan(64L << 20);
    }

    /// <summary>
    /// A 64-bit refcount above 2^63 is a leak like any other: the repair brings it down to the
    /// references, not an increment that "would exceed the maximum".
    /// </summary>
    [Test]
    public void Refcount_above_two_to_the_63_is_repaired_as_a_leak([Values(0xffff_ffff_ffff_fffeUL, 0x8000_0000_0000_0001UL)] ulong refcount)
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create("wide.qcow2", 4 << 20, "refcount_bits=64");
        builder.Io(path, "write -P 0x5a 0 128k");
        var bytes = File.ReadAllBytes(path);
        var table = BinaryPrimitives.ReadInt64BigEndian(bytes.AsSpan(48));
        var block = (int)BinaryPrimitives.ReadInt64BigEndian(bytes.AsSpan((int)table));
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(block + (3 * 8)), refcount); // a data cluster
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(block + (40 * 8)), refcount); // past the end of the file
        var storage = new FuzzStorage(bytes, bytes.Length, writable: true);
        using (var image = Qcow2Image.Open(storage, new Qcow2OpenOptions { Writable = true, ForRepair = true }, leaveOpen: true))
        {
            var result = image.Check(CheckRepair.All);
            result.Failure.ShouldBeNull(string.Join("\n", result.Messages));
            image.Check().IsClean.ShouldBeTrue();
        }
    }

    /// <summary>
    /// A v2 header has no feature fields: marking a v2 image corrupt or dirty changes nothing on
    /// disk (as QEMU's header update for compat=0.10), instead of writing past the header it built.
    /// </summary>
    [Test]
    public void Write_refused_for_overlapping_metadata_on_a_v2_image_fails_as_corruption()
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create("v2.qcow2", 4 << 20, "compat=0.10");
        builder.Io(path, "write -P 0x5a 0 64k");
        var bytes = File.ReadAllBytes(path);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(56), 2); // the refcount table claims the cluster after it
        using var image = Qcow2Image.Open(new FuzzStorage(bytes, bytes.Length, writable: true), new Qcow2OpenOptions { Writable = true });
        Should.Throw<InvalidDataException>(() =>
        {
            for (var i = 1; i < 8; i++)
            {
                image.Write(i * 65536L, new byte[65536].Select(_ => (byte)i).ToArray());
                image.Flush();
            }
        });
    }

    /// <summary>
    /// An L1 size raised over the clusters behind the table makes every non-zero word there an L2
    /// table to count: the check reads each, but into one buffer, not a new cluster per table.
    /// </summary>
    [Test]
    public void Check_of_an_oversized_l1_table_allocates_one_l2_buffer()
    {
        BinaryPrimitives.WriteUInt32BigEndian(_image.AsSpan(36), 0x10000);
        using var image = Qcow2Image.Open(new FuzzStorage(_image, _image.Length, writable: false), new Qcow2OpenOptions { ForRepair = true });
        var before = GC.GetAllocatedBytesForCurrentThread();
        image.Check();
        (GC.GetAllocatedBytesForCurrentThread() - before).ShouldBeLessThan(64L << 20);
    }

    /// <summary>
    /// A snapshot table read from offset 0 (nb_snapshots set, offset left 0) yields snapshots whose
    /// L1 tables lie on the header and whose names are 64 KiB of header bytes. The repair mended
    /// such an L1 table over the header (qemu-img no longer knew the file) and wrote the name into
    /// every line of a 986 MB report. Now the header stays and the report stays small.
    /// </summary>
    [Test]
    public void Repairing_snapshots_read_from_the_header_keeps_the_header_and_a_small_report()
    {
        var input = FuzzFixtures.Load(Path.Combine(FuzzFixtures.RepositoryDirectory, "zstd.000f77bd.qcow2.gz"));
        var storage = new FuzzStorage(FuzzFixtures.Materialize(input), input.Length, writable: true);
        var before = GC.GetAllocatedBytesForCurrentThread();
        using (var image = Qcow2Image.Open(storage, new Qcow2OpenOptions { Writable = true, ForRepair = true, Locking = FileLocking.Off }, leaveOpen: true))
        {
            var result = image.Check(CheckRepair.All);
            result.Messages.Sum(m => (long)m.Length).ShouldBeLessThan(16L << 20); // it was 986 MB
        }

        (GC.GetAllocatedBytesForCurrentThread() - before).ShouldBeLessThan(256L << 20);
        var header = storage.Snapshot(8);
        BinaryPrimitives.ReadUInt32BigEndian(header).ShouldBe(0x514649fbu, "the qcow2 magic survives the repair");
    }
}
