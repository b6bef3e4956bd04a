using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>qcow2 bench against qemu-img bench: the same requests leave the same disk, with the same first line and exit codes.</summary>
[TestFixture]
public class BenchCommandTests : TempDirectoryFixture
{
    [TestCase("-w", "--pattern=165", "-s", "65536", "-d", "1", "-c", "64")]
    [TestCase("-w", "--pattern=7", "-s", "4096", "-S", "1048576", "-d", "4", "-c", "200")]
    [TestCase("-w", "-s", "512", "-S", "3000", "-o", "1000", "-c", "100")]
    public void Writes_the_disk_qemu_img_bench_writes(params string[] options)
    {
        var ours = PathOf("ours.qcow2");
        var theirs = PathOf("theirs.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", ours, "64M");
        Qemu.Img("create", "-q", "-f", "qcow2", theirs, "64M");

        var expected = Qemu.ImgResult(["bench", .. options, theirs]);
        var actual = CliRunner.Run(["bench", .. options, ours]);

        actual.ExitCode.ShouldBe(expected.ExitCode);
        FirstLine(actual.Output).ShouldBe(FirstLine(expected.Output));
        actual.Output.ShouldContain("Run completed in ");
        Qemu.ImgResult("compare", ours, theirs).ExitCode.ShouldBe(0);
        Qemu.AssertClean(ours);
    }

    [Test]
    public void A_request_past_the_end_fails_as_in_qemu_img()
    {
        var path = PathOf("small.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "1M");
        var expected = Qemu.ImgResult("bench", "-w", "-s", "4096", "-o", "1048000", "-c", "2", path);
        var actual = CliRunner.Run(["bench", "-w", "-s", "4096", "-o", "1048000", "-c", "2", path]);
        actual.ExitCode.ShouldBe(expected.ExitCode);
        actual.ExitCode.ShouldBe(1);
        actual.Error.ShouldContain("Failed request: Input/output error");
    }

    private static string FirstLine(string text) => text.Split('\n')[0];
}
