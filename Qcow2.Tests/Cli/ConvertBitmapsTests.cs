using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>convert --bitmaps against qemu-img's (issue 13): same outcome, same bitmaps in the copy.</summary>
[TestFixture]
[Category("Interop")]
public class ConvertBitmapsTests : TempDirectoryFixture
{
    [TestCase("--bitmaps -O qcow2 {src} {dst}")]
    [TestCase("--bitmaps -O qcow2 -c {src} {dst}")]
    [TestCase("--bitmaps -O qcow2 -o cluster_size=4k {src} {dst}")]
    [TestCase("-O qcow2 {src} {dst}")]
    [TestCase("--bitmaps -O raw {src} {dst}")]
    [TestCase("--bitmaps -f raw -O qcow2 {raw} {dst}")]
    [TestCase("--bitmaps -O qcow2 {bad} {dst}")]
    [TestCase("--bitmaps --skip-broken-bitmaps -O qcow2 {bad} {dst}")]
    [TestCase("--skip-broken-bitmaps -O qcow2 {src} {dst}")]
    [TestCase("--bitmaps -O qcow2 -o compat=0.10 {src} {dst}")]
    public void Same_outcome_and_bitmaps_as_qemu_img_convert(string command)
    {
        var source = PathOf("src.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", source, "64M");
        Qemu.Img("bitmap", "--add", source, "a");
        Qemu.Io(source, "write -P 7 1M 64k", "write -P 8 40M 1M");
        Qemu.Img("bitmap", "--add", "-g", "4k", source, "d");
        Qemu.Io(source, "write -P 9 5M 4k");
        Qemu.Img("bitmap", "--disable", source, "d");
        File.Copy(source, PathOf("bad.qcow2"));
        Qemu.IoUnchecked(PathOf("bad.qcow2"), "write 0 4k", "abort");
        Qemu.Img("create", "-q", "-f", "raw", PathOf("r.img"), "64M");

        string[] Args(string side) => ["convert", .. command.Split(' ').Select(a => a switch
        {
            "{src}" => source,
            "{bad}" => PathOf("bad.qcow2"),
            "{raw}" => PathOf("r.img"),
            "{dst}" => PathOf($"{side}.out"),
            _ => a,
        })];
        var qemu = Qemu.ImgResult(Args("qemu"));
        var result = CliRunner.Run(Args("ours"));

        var context = $"qemu-img: {qemu.Output}{qemu.Error}\nours: {result.Output}{result.Error}";
        result.ExitCode.ShouldBe(qemu.ExitCode, context);
        result.Output.ShouldBe(qemu.Output, context);
        result.Error.Replace(PathOf("ours.out"), "DST", StringComparison.Ordinal)
            .ShouldBe(qemu.Error.Replace("qemu-img:", "qcow2:", StringComparison.Ordinal).Replace(PathOf("qemu.out"), "DST", StringComparison.Ordinal), context);
        File.Exists(PathOf("ours.out")).ShouldBe(File.Exists(PathOf("qemu.out")));
        if (qemu.ExitCode == 0)
        {
            var (ours, theirs) = (PathOf("ours.out"), PathOf("qemu.out"));
            Qemu.AssertClean(ours);
            Qemu.Compare(ours, theirs, "qcow2", "qcow2").ExitCode.ShouldBe(0);
            var listed = Qemu.InfoBitmapLines(ours);
            listed.ShouldBe(Qemu.InfoBitmapLines(theirs));
            foreach (var name in listed.Where(l => l.Contains("name: ", StringComparison.Ordinal)).Select(l => l.Split("name: ")[1]))
            {
                Qemu.DirtyRanges(ours, name).ShouldBe(Qemu.DirtyRanges(theirs, name), name);
            }
        }
    }
}
