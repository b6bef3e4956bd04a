using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// convert --salvage against qemu-img's (issue 13) on images QEMU opens but cannot fully map: an
/// L2 pointer that is not cluster aligned (a torn L1 write), in the middle of the disk, at its
/// start, and with compressed data. The copies are identical, and so is every warning line;
/// only the first line — the image's corruption, in each qcow2 driver's own words — differs.
/// </summary>
[TestFixture]
[Category("Interop")]
public class SalvageTests : TempDirectoryFixture
{
    [TestCase(1, "1k", false, "-O raw")]
    [TestCase(0, "1k", false, "-O raw")]
    [TestCase(6, "1k", false, "-O qcow2")]
    [TestCase(1, "1k", true, "-O raw")]
    [TestCase(1, "1k", false, "-q -O raw")]
    [TestCase(0, "64k", false, "-O raw -S 0")]
    public void Same_copy_and_warnings_as_qemu_img(int brokenL1Entry, string clusterSize, bool compressed, string options)
    {
        var source = PathOf("src.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", $"cluster_size={clusterSize}", source, "1M");
        Qemu.Io(source, "write -P 16 0 300k", "write -P 17 600k 250k", "write -z 900k 20k");
        if (compressed)
        {
            Qemu.Img("convert", "-c", "-O", "qcow2", "-o", $"cluster_size={clusterSize}", source, PathOf("c.qcow2"));
            File.Move(PathOf("c.qcow2"), source, overwrite: true);
        }

        var l1 = (long)ImagePatch.ReadU64(source, 40);
        var entry = l1 + (8 * brokenL1Entry);
        ImagePatch.ReadU64(source, entry).ShouldNotBe(0UL, "the broken entry points at a table");
        ImagePatch.WriteU64(source, entry, ImagePatch.ReadU64(source, entry) + 512); // not 512-aligned is a reserved bit, not a broken pointer

        string[] Args(string side) => ["convert", "--salvage", .. options.Split(' '), source, PathOf($"{side}.out")];
        var qemu = Qemu.ImgResult(Args("qemu"));
        var result = CliRunner.Run(Args("ours"));

        var context = $"qemu-img ({qemu.ExitCode}): {qemu.Error[..Math.Min(600, qemu.Error.Length)]}\nours ({result.ExitCode}): {result.Error[..Math.Min(600, result.Error.Length)]}";
        result.ExitCode.ShouldBe(qemu.ExitCode, context);
        result.Output.ShouldBe(qemu.Output, context);
        var theirLines = qemu.Error.Replace("qemu-img:", "qcow2:", StringComparison.Ordinal).Split('\n');
        var ourLines = result.Error.Split('\n');
        ourLines.Length.ShouldBe(theirLines.Length, context);
        ourLines[0].ShouldStartWith("qcow2: Image is corrupt: ");
        ourLines[0].ShouldEndWith("; further non-fatal corruption events will be suppressed");
        ourLines.Skip(1).ShouldBe(theirLines.Skip(1), context);
        var format = options.Contains("qcow2", StringComparison.Ordinal) ? "qcow2" : "raw";
        Qemu.Compare(PathOf("ours.out"), PathOf("qemu.out"), format, format).ExitCode.ShouldBe(0);
        if (format == "qcow2")
        {
            Qemu.AssertClean(PathOf("ours.out"));
        }
    }
}
