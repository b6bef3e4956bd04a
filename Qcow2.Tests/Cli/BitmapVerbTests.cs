using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// qcow2 bitmap against qemu-img bitmap (issue 13): the same command on twin images gives the same
/// exit code, stdout and stderr, and leaves bitmaps QEMU lists and reads identically.
/// </summary>
[TestFixture]
[Category("Interop")]
public class BitmapVerbTests : TempDirectoryFixture
{
    [TestCase("--add {img} new")]
    [TestCase("--add -g 512 {img} new")]
    [TestCase("--add --granularity 2G {img} new")]
    [TestCase("--add -g 4G {img} new")]
    [TestCase("--add -g 1000 {img} new")]
    [TestCase("--add -g xyz {img} new")]
    [TestCase("--add -g 0 {img} new")]
    [TestCase("--add {img} a")]
    [TestCase("--remove {img} a")]
    [TestCase("--remove {img} nope")]
    [TestCase("--clear {img} a")]
    [TestCase("--clear {img} nope")]
    [TestCase("--enable {img} d")]
    [TestCase("--disable {img} a")]
    [TestCase("--disable {img} nope")]
    [TestCase("--merge a {img} d")]
    [TestCase("--merge d {img} a")]
    [TestCase("--merge nope {img} d")]
    [TestCase("--merge a {img} nope")]
    [TestCase("--merge a -b {other} {img} d")]
    [TestCase("--merge a --source-file {other} --source-format qcow2 {img} d")]
    [TestCase("--merge a -b {small} {img} d")]
    [TestCase("--merge a -F qcow2 {img} d")]
    [TestCase("-b {other} --add {img} x")]
    [TestCase("-g 64k --clear {img} a")]
    [TestCase("{img} a")]
    [TestCase("--add {img}")]
    [TestCase("--add {img} a b")]
    [TestCase("--add --disable {img} n")]
    [TestCase("--disable --add {img} n")]
    [TestCase("--add --clear --enable --merge a {img} n")]
    [TestCase("--add --add {img} n")]
    [TestCase("--remove --add {img} a")]
    [TestCase("--remove --remove {img} a")]
    [TestCase("--clear {bad} a")]
    [TestCase("--enable {bad} a")]
    [TestCase("--merge d {bad} a")]
    [TestCase("--merge a {bad} d")]
    [TestCase("--remove {bad} a")]
    [TestCase("--add {missing} a")]
    [TestCase("--frobnicate {img} a")]
    public void Same_outcome_as_qemu_img_bitmap(string command)
    {
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("other.qcow2"), "64M");
        Qemu.Img("bitmap", "--add", PathOf("other.qcow2"), "a");
        Qemu.Io(PathOf("other.qcow2"), "write 32M 1M");
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("small.qcow2"), "32M");
        Qemu.Img("bitmap", "--add", PathOf("small.qcow2"), "a");
        var theirs = Fixture("qemu");
        var ours = Fixture("ours");

        string[] Args(string side) => ["bitmap", .. command.Split(' ').Select(a => a switch
        {
            "{img}" => PathOf($"{side}.qcow2"),
            "{bad}" => PathOf($"{side}-bad.qcow2"),
            "{other}" => PathOf("other.qcow2"),
            "{small}" => PathOf("small.qcow2"),
            "{missing}" => PathOf("missing.qcow2"),
            _ => a,
        })];
        var qemu = Qemu.ImgResult(Args("qemu"));
        var result = CliRunner.Run(Args("ours"));

        var context = $"qemu-img: {qemu.Output}{qemu.Error}\nours: {result.Output}{result.Error}";
        result.ExitCode.ShouldBe(qemu.ExitCode, context);
        result.Output.ShouldBe(qemu.Output, context);
        if (!command.StartsWith("--frobnicate", StringComparison.Ordinal))
        {
            Normalize(result.Error, "ours").ShouldBe(Normalize(qemu.Error.Replace("qemu-img:", "qcow2:", StringComparison.Ordinal), "qemu"), context);
        }

        foreach (var (mine, their) in new[] { (ours, theirs), (PathOf("ours-bad.qcow2"), PathOf("qemu-bad.qcow2")) })
        {
            Qemu.AssertClean(mine);
            var listed = Qemu.InfoBitmapLines(mine);
            listed.ShouldBe(Qemu.InfoBitmapLines(their));
            foreach (var name in listed.Where(l => l.Contains("name: ", StringComparison.Ordinal)).Select(l => l.Split("name: ")[1]))
            {
                if (!Qemu.Img("info", mine).Contains("in-use", StringComparison.Ordinal))
                {
                    Qemu.DirtyRanges(mine, name).ShouldBe(Qemu.DirtyRanges(their, name), name);
                }
            }
        }
    }

    /// <summary>
    /// An image with bitmap "a" (enabled, 64 KiB) dirty at 0 and 5 MiB and "d" (disabled, 4 KiB)
    /// dirty at 5 MiB; and a copy whose bitmaps a crash left in use (inconsistent).
    /// </summary>
    private string Fixture(string side)
    {
        var path = PathOf($"{side}.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "64M");
        Qemu.Img("bitmap", "--add", path, "a");
        Qemu.Io(path, "write 0 64k");
        Qemu.Img("bitmap", "--add", "-g", "4k", path, "d");
        Qemu.Io(path, "write 5M 4k");
        Qemu.Img("bitmap", "--disable", path, "d");
        File.Copy(path, PathOf($"{side}-bad.qcow2"));
        Qemu.IoUnchecked(PathOf($"{side}-bad.qcow2"), "write 1M 4k", "abort");
        return path;
    }

    private string Normalize(string text, string side) =>
        text.Replace(PathOf($"{side}-bad.qcow2"), "BAD", StringComparison.Ordinal).Replace(PathOf($"{side}.qcow2"), "IMG", StringComparison.Ordinal);
}
