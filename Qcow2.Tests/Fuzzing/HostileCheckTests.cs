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
}
