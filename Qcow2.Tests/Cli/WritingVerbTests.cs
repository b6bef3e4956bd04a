using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>create, resize and io behave like qemu-img and qemu-io.</summary>
[TestFixture]
[Category("Interop")]
public class WritingVerbTests : TempDirectoryFixture
{
    [Test]
    public void Create_prints_qemu_imgs_formatting_line()
    {
        var path = PathOf("a.qcow2");
        var ours = CliRunner.Run("create", "-f", "qcow2", path, "64M");
        ours.Output.ShouldBe($"Formatting '{path}', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=67108864 lazy_refcounts=off refcount_bits=16\n");
        var theirs = Qemu.Img("create", "-f", "qcow2", PathOf("b.qcow2"), "64M");
        theirs.ShouldBe(ours.Output.Replace("a.qcow2", "b.qcow2", StringComparison.Ordinal));
    }

    [Test]
    public void Create_with_backing_takes_its_size()
    {
        Qemu.Img("create", "-f", "qcow2", PathOf("base.qcow2"), "5M");
        CliRunner.Run("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", PathOf("top.qcow2")).ExitCode.ShouldBe(0);
        using var image = Qcow2Image.Open(PathOf("top.qcow2"));
        image.Size.ShouldBe(5 << 20);
        image.Info.BackingFileName.ShouldBe("base.qcow2");
    }

    [Test]
    public void Create_rejects_bad_options_without_leaving_a_file()
    {
        var path = PathOf("bad.qcow2");
        var result = CliRunner.Run("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=4k", path, "1M");
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain("16384");
        File.Exists(path).ShouldBeFalse();
        CliRunner.Run("create", "-f", "qcow2", "-o", "frobnicate=on", path, "1M").Error.ShouldContain("frobnicate");
        CliRunner.Run("create", "-f", "qcow2", path, "1X").Error.ShouldContain("Invalid image size");
    }

    [Test]
    public void Resize_grows_and_shrinks_only_with_the_shrink_flag()
    {
        var path = PathOf("r.qcow2");
        CliRunner.Run("create", "-q", "-f", "qcow2", path, "4M").ExitCode.ShouldBe(0);
        CliRunner.Run("resize", path, "+2M").Output.ShouldBe("Image resized.\n");
        var refused = CliRunner.Run("resize", path, "-1M");
        refused.ExitCode.ShouldBe(1);
        refused.Error.ShouldContain("--shrink");
        CliRunner.Run("resize", "--shrink", path, "-1M").ExitCode.ShouldBe(0);
        Qcow2Image.Open(path).Size.ShouldBe(5 << 20);
        Qemu.AssertClean(path);
    }

    [TestCase("0")]
    [TestCase("-4M")]
    [TestCase("-5M")]
    public void Resize_to_nothing_is_refused_like_qemu_img_and_leaves_the_image_alone(string size)
    {
        var path = PathOf("r.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        var before = File.ReadAllBytes(path);
        var theirs = Qemu.ImgResult("resize", "--shrink", path, "--", size);

        var ours = CliRunner.Run("resize", "--shrink", path, size);

        theirs.Error.ShouldBe("qemu-img: New image size must be positive\n");
        theirs.ExitCode.ShouldBe(1);
        ours.Error.ShouldBe("qcow2: New image size must be positive\n");
        ours.ExitCode.ShouldBe(1);
        File.ReadAllBytes(path).ShouldBe(before);
    }

    [Test]
    public void Io_reads_numbers_and_patterns_as_qemu_io_does()
    {
        var path = PathOf("io.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "1M");
        CliRunner.Run("io", "-c", "write -P 0x11 0x10000 4k", path).Output.ShouldStartWith("wrote 4096/4096 bytes at offset 65536\n");
        Qemu.Io(path, "read -P 17 64k 4k");

        var badPattern = CliRunner.Run("io", "-c", "write -P 300 0 4k", path);
        badPattern.Error.ShouldBe("qcow2 io: 300 is not a valid pattern byte\n", "300 is not silently written as 44");
        var tooLong = CliRunner.Run("io", "-c", "write 0 3G", path);
        tooLong.Error.ShouldBe("qcow2 io: length cannot exceed 2147483136, given 3G\n");
        var pastTheEnd = CliRunner.Run("io", "-c", "write 0x7ffffffffffffe00 512", path);
        pastTheEnd.ExitCode.ShouldBe(1);
        pastTheEnd.Error.ShouldStartWith("write failed: Input/output error", customMessage: "offset + length must not wrap around");
        Qemu.Io(path, "read -P 17 64k 4k");
    }

    [Test]
    public void Io_writes_reads_verifies_discards_and_flushes_like_qemu_io()
    {
        var path = PathOf("io.qcow2");
        CliRunner.Run("create", "-q", "-f", "qcow2", path, "4M");
        var result = CliRunner.Run("io", "-c", "write -P 0x11 0 64k", "-c", "write -z 64k 64k", "-c", "read -P 0x11 0 64k", "-c", "discard 1M 1M", "-c", "flush", path);
        result.ExitCode.ShouldBe(0, result.Error);
        result.Output.ShouldContain("wrote 65536/65536 bytes at offset 0");
        result.Output.ShouldContain("read 65536/65536 bytes at offset 0");
        result.Output.ShouldContain("discard 1048576/1048576 bytes at offset 1048576");
        var mismatch = CliRunner.Run("io", "-c", "read -P 0x12 0 4k", path);
        mismatch.ExitCode.ShouldBe(1);
        mismatch.Output.ShouldContain("Pattern verification failed at offset 0, 4096 bytes");
        Qemu.Io(path, "read -P 0x11 0 64k", "read -P 0 64k 64k");
        Qemu.AssertClean(path);
    }
}
