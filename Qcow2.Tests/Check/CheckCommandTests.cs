using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Check;

/// <summary>qcow2 check around the corpus: usage, formats, quiet mode, dirty and corrupt bits, dedup images.</summary>
[TestFixture]
[Category("Interop")]
public sealed class CheckCommandTests : TempDirectoryFixture
{
    private const long IncompatibleFeaturesOffset = 72;

    [Test]
    public void Raw_images_have_no_check_and_exit_63()
    {
        var raw = PathOf("disk.raw");
        Qemu.Img("create", "-f", "raw", raw, "1M");

        var theirs = Qemu.ImgResult("check", raw);
        var ours = CliRunner.Run("check", raw);

        ours.ExitCode.ShouldBe(theirs.ExitCode);
        ours.ExitCode.ShouldBe(63);
        ours.Error.ShouldBe("qcow2: This image format does not support checks\n");
        CliRunner.Run("check", "-f", "raw", Make("leaked_cluster")).ExitCode.ShouldBe(63);
    }

    [TestCase("-r", "bogus", "Unknown option value for -r (expecting 'leaks' or 'all'): bogus")]
    [TestCase("--output", "xml", "--output must be used with human or json as argument.")]
    [TestCase("--", "", "Expecting one image file name")]
    [TestCase("extra.qcow2", "", "Expecting one image file name")]
    public void Usage_errors_exit_1_with_qemu_imgs_message(string option, string value, string message)
    {
        var image = Make("leaked_cluster");
        string[] args = option == "--" ? ["check"] : value.Length > 0 ? ["check", option, value, image] : ["check", image, option];

        var theirs = Qemu.ImgResult(args);
        var ours = CliRunner.Run(args);

        ours.ExitCode.ShouldBe(theirs.ExitCode);
        ours.ExitCode.ShouldBe(1);
        theirs.Error.ShouldContain(message);
        ours.Error.ShouldContain(message);
    }

    [Test]
    public void A_missing_file_is_named()
    {
        var missing = PathOf("missing.qcow2");
        var ours = CliRunner.Run("check", missing);
        ours.ExitCode.ShouldBe(Qemu.ImgResult("check", missing).ExitCode);
        ours.Error.ShouldBe($"qcow2: Could not open '{missing}': Could not open '{missing}': No such file or directory\n");
    }

    [Test]
    public void Quiet_prints_nothing_but_keeps_the_exit_code()
    {
        var image = Make("leaked_cluster");
        var theirs = Qemu.ImgResult("check", "-q", image);
        var ours = CliRunner.Run("check", "-q", image);
        ours.ExitCode.ShouldBe(theirs.ExitCode);
        ours.ExitCode.ShouldBe(3);
        ours.Output.ShouldBeEmpty();
        theirs.Output.ShouldBeEmpty();
        CliRunner.Run("check", "-q", "-p", "--output=json", image).Output.ShouldBeEmpty();
    }

    [Test]
    public void A_repair_that_cannot_finish_keeps_the_dirty_bit_until_a_full_repair()
    {
        var image = Make("dirty_lazy_refcounts");
        var qemuCopy = PathOf("qemu.qcow2");
        File.Copy(image, qemuCopy);

        // -r leaks cannot rebuild the refcounts: the check aborts, as in qemu-img.
        var ours = CliRunner.Run("check", "-r", "leaks", image);
        var theirs = Qemu.ImgResult("check", "-r", "leaks", qemuCopy);
        ours.ExitCode.ShouldBe(theirs.ExitCode);
        ours.ExitCode.ShouldBe(1);
        ours.Output.ShouldBeEmpty();
        ours.Error.ShouldEndWith("qcow2: Check failed: Input/output error\n");

        // qemu-img clears the dirty bit on close anyway; we keep it, so the next read-write open still repairs.
        Incompatible(qemuCopy).HasFlag(IncompatibleFeatures.Dirty).ShouldBeFalse();
        Incompatible(image).HasFlag(IncompatibleFeatures.Dirty).ShouldBeTrue();

        CliRunner.Run("check", "-r", "all", image).ExitCode.ShouldBe(0);
        Incompatible(image).HasFlag(IncompatibleFeatures.Dirty).ShouldBeFalse();
        Qemu.AssertClean(image);
        Qemu.Io(image, "read -P 0x71 0 256k", "read -P 0x72 3M 64k");
    }

    [Test]
    public void The_check_api_reports_an_aborted_check()
    {
        var image = Make("refcount_zero_for_used_data_cluster");
        using var opened = Qcow2Image.Open(image, new Qcow2OpenOptions { Writable = true, ForRepair = true });
        var result = opened.Check(CheckRepair.Leaks);
        result.Failure.ShouldBe("Input/output error");
        result.ExitCode.ShouldBe(1);
        result.IsClean.ShouldBeFalse();
        result.Messages.ShouldContain("ERROR need to rebuild refcount structures");
    }

    [TestCase("copied_missing_on_data")]
    [TestCase("l1_entry_reserved_bits")] // qemu-img leaves this one corrupt; ours repairs it (issue 9)
    public void The_corrupt_bit_is_cleared_by_a_repair_that_leaves_no_corruption(string kind)
    {
        var image = Make(kind);
        ImagePatch.WriteU64(image, IncompatibleFeaturesOffset, ImagePatch.ReadU64(image, IncompatibleFeaturesOffset) | (ulong)IncompatibleFeatures.Corrupt);
        var qemuCopy = PathOf("qemu.qcow2");
        File.Copy(image, qemuCopy);

        var ours = CliRunner.Run("check", "-r", "all", image);
        var theirs = Qemu.ImgResult("check", "-r", "all", qemuCopy);
        ours.ExitCode.ShouldBe(0, ours.Error);

        Incompatible(image).HasFlag(IncompatibleFeatures.Corrupt).ShouldBeFalse();
        var qemuRepairs = BrokenImages.All.Single(k => k.Name == kind).QemuRepairs;
        theirs.ExitCode.ShouldBe(qemuRepairs ? 0 : 2);
        Incompatible(qemuCopy).HasFlag(IncompatibleFeatures.Corrupt).ShouldBe(!qemuRepairs);
    }

    [Test]
    public void The_corrupt_bit_stays_when_a_repair_leaves_corruption()
    {
        // An active L1 table 46 TiB out: a repair neither grows the file to reach it nor can it know what it mapped.
        var image = Make("leaked_cluster");
        ImagePatch.EditHeader(image, h => h with { Header = h.Header with { L1TableOffset = 46L << 40 } });
        ImagePatch.WriteU64(image, IncompatibleFeaturesOffset, ImagePatch.ReadU64(image, IncompatibleFeaturesOffset) | (ulong)IncompatibleFeatures.Corrupt);
        var qemuCopy = PathOf("qemu.qcow2");
        File.Copy(image, qemuCopy);

        var ours = CliRunner.Run("check", "-r", "all", image);
        ours.ExitCode.ShouldBe(Qemu.ImgResult("check", "-r", "all", qemuCopy).ExitCode, ours.Error);
        ours.ExitCode.ShouldBe(2, ours.Error);
        ours.Error.ShouldContain("Cannot repair: the active L1 table at 0x2e0000000000 lies more than 64 MiB past the end of the file");

        Incompatible(image).HasFlag(IncompatibleFeatures.Corrupt).ShouldBeTrue();
        Incompatible(qemuCopy).HasFlag(IncompatibleFeatures.Corrupt).ShouldBeTrue();
        new FileInfo(image).Length.ShouldBeLessThan(1L << 20);
    }

    [Test]
    public void Dedup_images_check_like_qemu_img_and_keep_their_index_through_a_repair()
    {
        var image = PathOf("dedup.qcow2");
        CliRunner.Run("create", "-q", "-f", "qcow2", "-o", "dedup=on", image, "64M").ExitCode.ShouldBe(0);
        var written = CliRunner.Run("io", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0x5a 128k 64k", "-c", "write -P 0x5a 1M 64k", image);
        written.ExitCode.ShouldBe(0, written.Error);
        CliRunner.Run("check", "--output=json", image).Output.ShouldBe(Qemu.ImgResult("check", "--output=json", image).Output);

        var leaked = (new FileInfo(image).Length / BrokenImages.ClusterSize) + 1;
        ImagePatch.Truncate(image, (leaked + 1) * BrokenImages.ClusterSize);
        var block = (long)ImagePatch.ReadU64(image, ImagePatch.ReadHeader(image).Header.RefcountTableOffset);
        ImagePatch.WriteBytes(image, block + (leaked * 2), [0, 1]);
        Qemu.Check(image).Leaks.ShouldBe(1);

        var repaired = CliRunner.Run("check", "-r", "all", image);
        repaired.ExitCode.ShouldBe(0, repaired.Error);
        repaired.Output.ShouldContain("    1 leaked clusters");
        Qemu.AssertClean(image);
        CliRunner.Run("info", image).Output.ShouldContain("Deduplication: on\n");
        Qemu.Io(image, "read -P 0x5a 0 64k", "read -P 0x5a 128k 64k", "read -P 0x5a 1M 64k");
    }

    private string Make(string kind)
    {
        var path = PathOf(kind + ".qcow2");
        var corpus = BrokenImages.All.Single(k => k.Name == kind);
        corpus.Build(path);
        corpus.Break(path);
        return path;
    }

    private static IncompatibleFeatures Incompatible(string path) => (IncompatibleFeatures)ImagePatch.ReadU64(path, IncompatibleFeaturesOffset);
}
