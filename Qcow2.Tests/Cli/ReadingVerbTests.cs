using System.Text.Json.Nodes;
using QcowDedup.Cli.Commands;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>info, map, convert -O raw and compare print what qemu-img prints and exit as it does.</summary>
[TestFixture]
[Category("Interop")]
public class ReadingVerbTests : TempDirectoryFixture
{
    private static readonly string[] JsonCells =
    [
        "v2_compat_0.10_64k", "v3_cluster_512", "convert_compressed_zstd", "extended_l2_16k", "backing_chain_qcow2_qcow2_raw",
        "data_file_raw", "internal_snapshots", "bitmap_added", "lazy_refcounts_dirty", "preallocation_metadata",
    ];

    private static IEnumerable<TestCaseData> Cells() =>
        ReadMatrix.Cells().Where(c => JsonCells.Contains(((ReadCell)c.Arguments[0]!).Name));

    [TestCaseSource(nameof(Cells))]
    public void Info_json_equals_qemu_img_info(ReadCell cell)
    {
        var image = cell.Build(new ImageBuilder(Directory)).Path;
        var ours = CliRunner.Run("info", "--output", "json", image);
        ours.ExitCode.ShouldBe(0, ours.Error);
        JsonNode.DeepEquals(JsonNode.Parse(ours.Output), JsonNode.Parse(Qemu.Img("info", "--output=json", image)))
            .ShouldBeTrue($"ours:\n{ours.Output}\nqemu-img:\n{Qemu.Img("info", "--output=json", image)}");
    }

    [TestCaseSource(nameof(Cells))]
    public void Map_json_equals_qemu_img_map(ReadCell cell)
    {
        var image = cell.Build(new ImageBuilder(Directory)).Path;
        var ours = CliRunner.Run("map", "--output=json", image);
        ours.ExitCode.ShouldBe(0, ours.Error);
        ours.Output.ShouldBe(Qemu.Img("map", "--output=json", image));
    }

    [Test]
    public void Info_human_lists_the_snapshot_table_like_qemu_img()
    {
        var image = new ImageBuilder(Directory).Create("image.qcow2", 1 << 20);
        Qemu.Img("snapshot", "-c", "first", image);
        var ours = CliRunner.Run("info", image).Output;
        var qemu = Qemu.Img("info", image);
        ours.ShouldBe(qemu);
    }

    [TestCase("v3_cluster_4096")]
    [TestCase("convert_compressed_zlib")]
    [TestCase("backing_chain_qcow2_qcow2_raw")]
    [TestCase("extended_l2_16k")]
    public void Convert_to_raw_equals_qemu_img_convert(string cellName)
    {
        var builder = new ImageBuilder(Directory);
        var cell = (ReadCell)ReadMatrix.Cells().Single(c => ((ReadCell)c.Arguments[0]!).Name == cellName).Arguments[0]!;
        var image = cell.Build(builder).Path;
        var ours = PathOf("ours.raw");
        CliRunner.Run("convert", "-O", "raw", image, ours).ExitCode.ShouldBe(0);
        File.ReadAllBytes(ours).ShouldBe(File.ReadAllBytes(builder.ToRaw(image)));
    }

    [Test]
    public void Convert_detects_the_source_format_by_magic()
    {
        var raw = PathOf("source.raw");
        File.WriteAllBytes(raw, [.. Enumerable.Range(0, 8192).Select(i => (byte)i)]);
        CliRunner.Run("convert", "-O", "raw", raw, PathOf("copy.raw")).ExitCode.ShouldBe(0);
        File.ReadAllBytes(PathOf("copy.raw")).ShouldBe(File.ReadAllBytes(raw));
    }

    [Test]
    public void Compare_exit_codes_follow_qemu_img()
    {
        var builder = new ImageBuilder(Directory);
        var a = builder.Create("a.qcow2", 1 << 20);
        var b = builder.Create("b.qcow2", 2 << 20);
        builder.Io(a, "write -P 7 4k 4k");
        builder.Io(b, "write -P 7 4k 4k");

        var same = CliRunner.Run("compare", a, b);
        same.ExitCode.ShouldBe(0);
        same.Output.ShouldBe("Warning: Image size mismatch!\nImages are identical.\n");

        builder.Io(b, "write -P 1 1536k 512");
        var different = CliRunner.Run("compare", a, b);
        different.ExitCode.ShouldBe(1);
        different.Output.ShouldContain("Content mismatch at offset 1572864!");
        Qemu.ImgResult("compare", a, b).Output.ShouldContain("Content mismatch at offset 1572864!");

        CliRunner.Run("compare", a, PathOf("missing.qcow2")).ExitCode.ShouldBe(2);
        CliRunner.Run("compare", "-s", a, b).ExitCode.ShouldBe(1);
    }

    [Test]
    public void Errors_go_to_stderr_without_stack_traces()
    {
        var missing = CliRunner.Run("info", PathOf("missing.qcow2"));
        missing.ExitCode.ShouldBe(1);
        missing.Error.ShouldContain("Could not open");
        missing.Error.ShouldNotContain("   at ");
        missing.Output.ShouldBeEmpty();

        var garbage = PathOf("garbage.qcow2");
        File.WriteAllBytes(garbage, [.. "QFI\u00fb"u8, .. new byte[200]]);
        var corrupt = CliRunner.Run("info", "-f", "qcow2", garbage);
        corrupt.ExitCode.ShouldBe(1);
        corrupt.Error.ShouldStartWith("qcow2: ");
        corrupt.Error.ShouldNotContain("   at ");

        CliRunner.Run("frobnicate").ExitCode.ShouldBe(1);
        var usage = CliRunner.Run("info", "--output", "yaml", garbage);
        usage.ExitCode.ShouldBe(1);
        usage.Error.ShouldBe("qcow2: --output must be used with human or json as argument.\n");
        var missingArgument = CliRunner.Run("info");
        missingArgument.ExitCode.ShouldBe(1);
        missingArgument.Error.ShouldBe($"qcow2 info: missing arguments; usage: {InfoCommand.Usage}\n", "the usage once, on the one error line");
    }
}
