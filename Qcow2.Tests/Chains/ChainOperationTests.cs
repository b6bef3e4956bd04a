using System.Text.Json;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Chains;

/// <summary>
/// Issue 5, acceptance 3: commit, rebase (safe and unsafe) and amend (each option, both
/// directions). Each runs on one copy of an image set built with qemu-img/qemu-io while qemu-img
/// does the same on another copy; the results compare equal in qemu-img compare and check clean.
/// </summary>
[TestFixture]
[Category("Interop")]
public class ChainOperationTests : TempDirectoryFixture
{
    [TestCase("qcow2", false, false)]
    [TestCase("qcow2", true, false)] // the overlay is larger: the base grows
    [TestCase("raw", true, false)]
    [TestCase("qcow2", false, true)] // -d: the overlay keeps its data
    public void Commit_matches_qemu_img(string baseFormat, bool largerOverlay, bool keep)
    {
        var (ours, theirs) = Twins(dir =>
        {
            var basePath = Path.Combine(dir, $"base.{baseFormat}");
            Qemu.Img("create", "-q", "-f", baseFormat, basePath, "4M");
            Qemu.IoFormat(baseFormat, basePath, "write -P 1 0 2M", "write -P 5 3M 64k");
            var overlay = Path.Combine(dir, "top.qcow2");
            Qemu.Img("create", "-q", "-f", "qcow2", "-b", $"base.{baseFormat}", "-F", baseFormat, overlay, largerOverlay ? "6M" : "4M");
            Qemu.Io(overlay, "write -P 2 1M 64k", "write -z 1536k 64k", "write -P 4 100k 3k", "write -z 3M 64k", largerOverlay ? "write -P 3 5M 64k" : "write -P 3 2M 64k");
        });
        var keepFlag = keep ? new[] { "-d" } : [];
        Qemu.Img(["commit", "-q", .. keepFlag, Path.Combine(theirs, "top.qcow2")]);
        var result = CliRunner.Run(["commit", .. keepFlag, Path.Combine(ours, "top.qcow2")]);
        result.ExitCode.ShouldBe(0, result.Error);
        result.Output.ShouldContain("Image committed.");

        AssertSame(Path.Combine(ours, $"base.{baseFormat}"), Path.Combine(theirs, $"base.{baseFormat}"), baseFormat);
        AssertSame(Path.Combine(ours, "top.qcow2"), Path.Combine(theirs, "top.qcow2"), "qcow2");
        if (!keep)
        {
            Qemu.Img("map", "--output=json", Path.Combine(ours, "top.qcow2")).ShouldNotContain("\"depth\": 0", customMessage: "the emptied overlay holds nothing itself");
        }
    }

    [Test]
    public void Commit_into_a_base_with_an_external_data_file_writes_the_data_file()
    {
        // QEMU opens relative data file names against its working directory: the test directory.
        var basePath = PathOf("base.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", "data_file=base.data", basePath, "4M");
        Qemu.Io(basePath, "write -P 1 0 1M");
        Qemu.Img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", PathOf("top.qcow2"));
        Qemu.Io(PathOf("top.qcow2"), "write -P 2 512k 64k", "write -P 3 2M 64k");

        // The overlay's read-only view holds the data file against resizing; the commit writes it.
        var result = CliRunner.Run("commit", PathOf("top.qcow2"));
        result.ExitCode.ShouldBe(0, result.Error);
        Qemu.AssertClean(basePath);
        Qemu.Io(basePath, "read -P 1 0 512k", "read -P 2 512k 64k", "read -P 1 576k 448k", "read -P 3 2M 64k", "read -P 0 1M 1M");
    }

    [TestCase("qcow2", false)]
    [TestCase("raw", false)]
    [TestCase("none", false)]
    [TestCase("qcow2", true)] // -u: only the name changes
    public void Rebase_matches_qemu_img(string newBacking, bool unsafeRebase)
    {
        var (ours, theirs) = Twins(dir =>
        {
            Qemu.Img("create", "-q", "-f", "qcow2", Path.Combine(dir, "old.qcow2"), "4M");
            Qemu.Io(Path.Combine(dir, "old.qcow2"), "write -P 1 0 2M", "write -P 7 3M 128k");
            Qemu.Img("create", "-q", "-f", "qcow2", Path.Combine(dir, "new.qcow2"), "4M");
            Qemu.Io(Path.Combine(dir, "new.qcow2"), "write -P 1 0 1M", "write -P 9 3M 64k");
            Qemu.Img("create", "-q", "-f", "raw", Path.Combine(dir, "new.raw"), "2M");
            Qemu.IoFormat("raw", Path.Combine(dir, "new.raw"), "write -P 1 512k 512k");
            var overlay = Path.Combine(dir, "top.qcow2");
            Qemu.Img("create", "-q", "-f", "qcow2", "-b", "old.qcow2", "-F", "qcow2", overlay, "6M");
            Qemu.Io(overlay, "write -P 2 1M 64k", "write -P 4 100k 3k", "write -z 3M 64k");
        });
        string[] args = newBacking switch
        {
            "none" => ["-b", ""],
            "raw" => ["-b", "new.raw", "-F", "raw"],
            _ => ["-b", "new.qcow2", "-F", "qcow2"],
        };
        var unsafeFlag = unsafeRebase ? new[] { "-u" } : [];
        Qemu.Img(["rebase", .. unsafeFlag, .. args, Path.Combine(theirs, "top.qcow2")]);
        var result = CliRunner.Run(["rebase", .. unsafeFlag, .. args, Path.Combine(ours, "top.qcow2")]);
        result.ExitCode.ShouldBe(0, result.Error);

        AssertSame(Path.Combine(ours, "top.qcow2"), Path.Combine(theirs, "top.qcow2"), "qcow2");
        var info = Qemu.Img("info", Path.Combine(ours, "top.qcow2"));
        if (newBacking == "none")
        {
            info.ShouldNotContain("backing file:");
        }
        else
        {
            info.ShouldContain($"backing file: {args[1]}");
        }
    }

    [TestCase("1.1", "compat=0.10")]
    [TestCase("0.10", "compat=1.1")]
    [TestCase("1.1", "refcount_bits=64")]
    [TestCase("1.1,refcount_bits=64", "refcount_bits=16")]
    [TestCase("1.1", "refcount_bits=2")]
    [TestCase("1.1", "lazy_refcounts=on")]
    [TestCase("1.1,lazy_refcounts=on", "lazy_refcounts=off")]
    [TestCase("1.1", "size=16M")]
    [TestCase("1.1,refcount_bits=64", "compat=0.10,refcount_bits=16")]
    public void Amend_matches_qemu_img(string createOptions, string amendOptions)
    {
        var (ours, theirs) = Twins(dir =>
        {
            var path = Path.Combine(dir, "image.qcow2");
            Qemu.Img("create", "-q", "-f", "qcow2", "-o", "compat=" + createOptions, path, "4M");
            Qemu.Io(path, "write -P 1 0 1M", "write -z 64k 64k", "write -z -u 128k 64k", "write -z 2M 64k");
            Qemu.Img("snapshot", "-c", "before", path);
            Qemu.Io(path, "write -P 2 512k 64k", "write -z 3M 64k");
        });
        Qemu.Img("amend", "-o", amendOptions, Path.Combine(theirs, "image.qcow2"));
        var result = CliRunner.Run("amend", "-o", amendOptions, Path.Combine(ours, "image.qcow2"));
        result.ExitCode.ShouldBe(0, result.Error);

        var ourImage = Path.Combine(ours, "image.qcow2");
        var theirImage = Path.Combine(theirs, "image.qcow2");
        AssertSame(ourImage, theirImage, "qcow2");
        FormatFacts(ourImage).ShouldBe(FormatFacts(theirImage));
        SnapshotBytes(ourImage, "before").ShouldBe(SnapshotBytes(theirImage, "before"));
    }

    [TestCase("refcount_bits=1", "Cannot decrease refcount entry width to 1 bits")]
    [TestCase("compat=0.10,refcount_bits=64", "Refcount widths other than 16 bits require compatibility level 1.1 or above")]
    [TestCase("refcount_bits=3", "power of two")]
    [TestCase("cluster_size=4k", "This option is only supported for image creation")]
    public void Amend_refuses_what_qemu_img_refuses(string amendOptions, string message)
    {
        var path = PathOf("refuse.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 1 0 1M");
        Qemu.Img("snapshot", "-c", "shared", path); // refcount 2 everywhere
        var before = File.ReadAllBytes(path);
        Qemu.ImgResult("amend", "-o", amendOptions, path).ExitCode.ShouldNotBe(0);

        var result = CliRunner.Run("amend", "-o", amendOptions, path);
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain(message);
        File.ReadAllBytes(path).ShouldBe(before, "a refused amend changes nothing");
    }

    /// <summary>Runs <paramref name="build"/> once and copies the result, so both sides start byte-identical.</summary>
    private (string Ours, string Theirs) Twins(Action<string> build)
    {
        var ours = PathOf("ours");
        var theirs = PathOf("theirs");
        System.IO.Directory.CreateDirectory(ours);
        System.IO.Directory.CreateDirectory(theirs);
        build(ours);
        foreach (var file in System.IO.Directory.GetFiles(ours))
        {
            File.Copy(file, Path.Combine(theirs, Path.GetFileName(file)));
        }

        return (ours, theirs);
    }

    private static void AssertSame(string ours, string theirs, string format)
    {
        if (format == "qcow2")
        {
            Qemu.AssertClean(ours);
        }

        var compare = Qemu.Compare(ours, theirs, format, format);
        compare.ExitCode.ShouldBe(0, compare.Output + compare.Error);
    }

    private static string FormatFacts(string path)
    {
        using var info = JsonDocument.Parse(Qemu.Img("info", "--output=json", path));
        var root = info.RootElement;
        return $"{root.GetProperty("virtual-size").GetInt64()} {root.GetProperty("format-specific").GetProperty("data")}";
    }

    private byte[] SnapshotBytes(string path, string snapshot)
    {
        var raw = PathOf($"{Path.GetFileName(Path.GetDirectoryName(path))}-{snapshot}.raw");
        Qemu.Img("convert", "-l", $"snapshot.name={snapshot}", "-O", "raw", path, raw);
        return File.ReadAllBytes(raw);
    }
}
