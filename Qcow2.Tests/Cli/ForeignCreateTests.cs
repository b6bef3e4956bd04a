using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>create -f vmdk|vhdx|vpc|vdi against qemu-img create (issue 13): same line, same exit code, a disk QEMU reads as the same.</summary>
[TestFixture]
[Category("Interop")]
public class ForeignCreateTests : TempDirectoryFixture
{
    [TestCase("vmdk", "")]
    [TestCase("vmdk", "subformat=monolithicFlat")]
    [TestCase("vmdk", "subformat=twoGbMaxExtentSparse")]
    [TestCase("vhdx", "")]
    [TestCase("vpc", "")]
    [TestCase("vpc", "subformat=fixed")]
    [TestCase("vdi", "")]
    [TestCase("vdi", "static=on")]
    public void Creates_what_qemu_img_creates(string format, string options)
    {
        string[] Args(string name) => ["create", "-f", format, .. options.Length > 0 ? new[] { "-o", options } : [], name, "3M"];
        var theirs = PathOf($"qemu.{format}");
        var ours = PathOf($"ours.{format}");
        var qemu = Qemu.ImgResult(Args(theirs));
        var result = CliRunner.Run(Args(ours));

        result.ExitCode.ShouldBe(qemu.ExitCode, result.Error);
        result.Output.Replace(ours, theirs, StringComparison.Ordinal).ShouldBe(qemu.Output);
        Qemu.Compare(ours, theirs, format, format).ExitCode.ShouldBe(0);
        string VirtualSize(string path) => Qemu.Img("info", "-f", format, path).Split('\n')[2];
        VirtualSize(ours).ShouldBe(VirtualSize(theirs));
    }
}
