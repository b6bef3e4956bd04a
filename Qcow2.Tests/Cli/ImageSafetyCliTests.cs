using System.Security.Cryptography;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// The command line never writes an image someone else holds, never writes a file its own input
/// reads, and shows what it can of a chain with a missing or refused file — as qemu-img does, or
/// more safely where qemu-img relies on its locks alone.
/// </summary>
[TestFixture]
[Category("Interop")]
public class ImageSafetyCliTests : TempDirectoryFixture
{
    private static readonly string[][] WritingVerbs =
    [
        ["io", "-c", "write -P 0x77 0 64k", "{img}"],
        ["snapshot", "-c", "snap", "{img}"],
        ["snapshot", "-a", "1", "{img}"],
        ["snapshot", "-d", "first", "{img}"],
        ["resize", "{img}", "32M"],
        ["commit", "{top}"],
        ["rebase", "-u", "-b", "", "{img}"],
        ["rebase", "-b", "", "{img}"],
        ["amend", "-o", "lazy_refcounts=on", "{img}"],
        ["dedup", "{img}"],
        ["check", "-r", "all", "{img}"],
        ["create", "-f", "qcow2", "{img}", "1M"],
        ["convert", "-O", "qcow2", "{other}", "{img}"],
        ["convert", "-O", "raw", "{other}", "{img}"],
    ];

    private static readonly string[][] ReadingVerbs =
    [
        ["info", "{img}"],
        ["map", "{img}"],
        ["check", "{img}"],
        ["compare", "{img}", "{img}"],
        ["convert", "-O", "raw", "{img}", "{out}"],
        ["measure", "-O", "qcow2", "{img}"],
        ["snapshot", "-l", "{img}"],
        ["io", "-r", "-c", "read 0 512", "{img}"],
    ];

    [TestCaseSource(nameof(WritingCases))]
    public void Writing_verbs_refuse_an_image_qemu_is_writing(string[] template)
    {
        var image = PrepareImage();
        using (var qemu = QemuIoSession.Open(image))
        {
            qemu.Run("write -P 0x5a 64k 64k");
            var result = CliRunner.Run(template.Select(Expand).ToArray());
            result.ExitCode.ShouldBe(1, result.Error);
            result.Error.ShouldContain("lock");
            result.Error.ShouldContain("Is another process using the image");
            qemu.Run("write -P 0x5b 128k 64k");
        }

        Qemu.AssertClean(image);
        Qemu.Io(image, "read -P 0x11 0 64k", "read -P 0x5a 64k 64k", "read -P 0x5b 128k 64k");
        Qemu.Img("snapshot", "-l", image).ShouldContain("first");
    }

    [TestCaseSource(nameof(ReadingCases))]
    public void Reading_verbs_need_force_share_while_qemu_writes(string[] template)
    {
        var image = PrepareImage();
        using var qemu = QemuIoSession.Open(image);
        var args = template.Select(Expand).ToArray();

        var refused = CliRunner.Run(args);
        refused.ExitCode.ShouldBe(args[0] == "compare" ? 2 : 1, refused.Error);
        refused.Error.ShouldContain("Failed to get shared \"write\" lock");

        var shared = CliRunner.Run([args[0], "-U", .. args[1..]]);
        shared.ExitCode.ShouldBe(args[0] == "check" ? 0 : 0, shared.Error);
    }

    [Test]
    public void Force_share_is_refused_for_writing_like_qemu()
    {
        var image = PrepareImage();
        var result = CliRunner.Run("check", "-U", "-r", "all", image);
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain("force-share=on can only be used with read-only images");
        CliRunner.Run("io", "-U", "-c", "write 0 512", image).Error.ShouldContain("force-share=on can only be used with read-only images");
    }

    [Test]
    public void Convert_onto_its_own_source_is_refused_and_the_source_is_untouched([Values("qcow2", "raw")] string format)
    {
        var image = PrepareImage();
        var before = Hash(image);
        var result = CliRunner.Run("convert", "-O", format, image, image);
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain("source");
        Hash(image).ShouldBe(before);

        File.CreateSymbolicLink(PathOf("alias.qcow2"), image);
        CliRunner.Run("convert", "-O", format, image, PathOf("alias.qcow2")).ExitCode.ShouldBe(1);
        Hash(image).ShouldBe(before);
        Qemu.AssertClean(image);
    }

    [Test]
    public void Convert_onto_the_sources_backing_file_is_refused()
    {
        var top = PrepareOverlay();
        var before = Hash(PathOf("base.qcow2"));
        var result = CliRunner.Run("convert", "-O", "qcow2", top, PathOf("base.qcow2"));
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain("backing");
        Hash(PathOf("base.qcow2")).ShouldBe(before);
    }

    [Test]
    public void An_image_never_becomes_its_own_backing_file([Values("-u", null)] string? unsafeFlag)
    {
        var image = PrepareImage();
        File.CreateSymbolicLink(PathOf("alias.qcow2"), image);
        foreach (var name in new[] { "img.qcow2", "./img.qcow2", "alias.qcow2" })
        {
            var result = CliRunner.Run(["rebase", .. unsafeFlag is null ? Array.Empty<string>() : [unsafeFlag], "-b", name, "-F", "qcow2", image]);
            result.ExitCode.ShouldBe(1, name);
        }

        Qemu.Img("info", image).ShouldNotContain("backing file");
        Qemu.AssertClean(image);
    }

    [Test]
    public void Info_shows_an_overlay_whose_backing_file_is_missing()
    {
        var top = PrepareOverlay();
        File.Delete(PathOf("base.qcow2"));

        var plain = CliRunner.Run("info", top);
        plain.ExitCode.ShouldBe(0, plain.Error);
        plain.Output.ShouldContain("backing file: base.qcow2");
        var theirs = Qemu.Img("info", top);
        theirs.ShouldContain("backing file: base.qcow2");

        var chain = CliRunner.Run("info", "--backing-chain", top);
        chain.ExitCode.ShouldBe(1);
        chain.Output.ShouldContain($"image: {top}");
        chain.Error.ShouldContain("base.qcow2");
        chain.Error.ShouldContain("does not exist");
    }

    [Test]
    public void Backing_policy_flag_chooses_what_an_image_may_open()
    {
        var top = PrepareOverlay();
        CliRunner.Run("map", "--backing-policy=any", top).ExitCode.ShouldBe(0);
        CliRunner.Run("map", "--backing-policy=confined", top).ExitCode.ShouldBe(0);

        var none = CliRunner.Run("map", "--backing-policy=none", top);
        none.ExitCode.ShouldBe(1);
        none.Error.ShouldContain("does not allow");

        var elsewhere = CliRunner.Run("map", $"--backing-policy=confined:{PathOf("sub")}", top);
        elsewhere.ExitCode.ShouldBe(1);
        elsewhere.Error.ShouldContain("does not allow");

        var info = CliRunner.Run("info", "--backing-policy=none", "--backing-chain", top);
        info.ExitCode.ShouldBe(1);
        info.Output.ShouldContain("backing file: base.qcow2");
        info.Error.ShouldContain("does not allow");
        CliRunner.Run("info", "--backing-policy=none", top).ExitCode.ShouldBe(0);
    }

    [Test]
    [CancelAfter(60_000)]
    public void A_fifo_as_backing_file_fails_every_verb_quickly()
    {
        System.Diagnostics.Process.Start("mkfifo", PathOf("pipe"))!.WaitForExit();
        Qemu.Img("create", "-f", "qcow2", "-u", "-b", "pipe", "-F", "raw", PathOf("top.qcow2"), "1M");
        var top = PathOf("top.qcow2");
        foreach (var args in new[] { ["info", "--backing-chain", top], ["check", top], ["map", top], new[] { "convert", "-O", "raw", top, PathOf("out.raw") } })
        {
            var result = CliRunner.Run(args);
            result.ExitCode.ShouldBe(1, string.Join(' ', args));
            result.Error.ShouldContain("FIFO");
        }
    }

    private static IEnumerable<TestCaseData> WritingCases() => WritingVerbs.Select(Case);

    private static IEnumerable<TestCaseData> ReadingCases() => ReadingVerbs.Select(Case);

    private static TestCaseData Case(string[] args) => new TestCaseData((object)args).SetArgDisplayNames(string.Join(' ', args.Select(a => a.Length == 0 ? "\"\"" : a)));

    /// <summary>img.qcow2 with a snapshot "first" and 0x11 in its first cluster; top.qcow2 over it; other.qcow2 beside.</summary>
    private string PrepareImage()
    {
        var image = PathOf("img.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", image, "16M");
        Qemu.Io(image, "write -P 0x11 0 64k");
        Qemu.Img("snapshot", "-c", "first", image);
        Qemu.Img("create", "-q", "-f", "qcow2", "-b", "img.qcow2", "-F", "qcow2", PathOf("top.qcow2"));
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("other.qcow2"), "16M");
        return image;
    }

    private string PrepareOverlay()
    {
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("base.qcow2"), "4M");
        Qemu.Io(PathOf("base.qcow2"), "write -P 0x42 0 64k");
        Qemu.Img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", PathOf("top.qcow2"));
        System.IO.Directory.CreateDirectory(PathOf("sub"));
        return PathOf("top.qcow2");
    }

    private string Expand(string arg) => arg switch
    {
        "{img}" => PathOf("img.qcow2"),
        "{top}" => PathOf("top.qcow2"),
        "{other}" => PathOf("other.qcow2"),
        "{out}" => PathOf("out.raw"),
        _ => arg,
    };

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));
}
