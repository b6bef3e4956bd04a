using System.Text.Json;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>Issue 4, acceptance 9 and the CLI surface: create/convert -o dedup, qcow2 dedup, info.</summary>
[TestFixture]
[Category("Interop")]
public class DedupCliTests : TempDirectoryFixture
{
    private const int ClusterSize = 65536;

    [Test]
    public void Info_reports_savings_and_index_cost_in_text_and_json()
    {
        var image = ConvertDuplicates("info.qcow2", copies: 6, distinct: 3);

        var plain = CliRunner.Run("info", image);
        plain.ExitCode.ShouldBe(0, plain.Error);
        plain.Output.ShouldContain("Deduplication: on\n");
        plain.Output.ShouldContain("stored once: 18 guest clusters of data (1.12 MiB) are kept in 3 clusters of the file (192 KiB)");
        plain.Output.ShouldContain("space saved: 960 KiB: without deduplication the file would hold 960 KiB more data (6.00x less)");
        plain.Output.ShouldContain("never data");
        plain.Output.ShouldNotContain("incarnations", customMessage: "the index's internals only under --dedup-details");

        var text = CliRunner.Run("info", "--dedup-details", image);
        text.ExitCode.ShouldBe(0, text.Error);
        text.Output.ShouldContain("Deduplication details:");
        text.Output.ShouldContain("state: active");
        text.Output.ShouldContain("hash: sha256");
        text.Output.ShouldContain("unique clusters: 3");
        text.Output.ShouldContain("shared references: 15");
        text.Output.ShouldContain("bytes per indexed cluster");

        var json = CliRunner.Run("info", "--output=json", image);
        json.ExitCode.ShouldBe(0, json.Error);
        using var document = JsonDocument.Parse(json.Output);
        var dedup = document.RootElement.GetProperty("dedup");
        dedup.GetProperty("state").GetString().ShouldBe("active");
        dedup.GetProperty("hash").GetString().ShouldBe("sha256");
        dedup.GetProperty("clusters-written").GetInt64().ShouldBe(18);
        dedup.GetProperty("clusters-deduplicated").GetInt64().ShouldBe(15);
        dedup.GetProperty("references").GetInt64().ShouldBe(18);
        dedup.GetProperty("unique-clusters").GetInt64().ShouldBe(3);
        dedup.GetProperty("bytes-saved").GetInt64().ShouldBe(15L * ClusterSize);
        dedup.GetProperty("dedup-ratio").GetDouble().ShouldBe(6.0);
        dedup.GetProperty("log-store-entries").GetInt32().ShouldBe(3);
        dedup.GetProperty("log-store-capacity").GetInt32().ShouldBeGreaterThan(3);
        dedup.GetProperty("incarnation-entries").GetArrayLength().ShouldBe(0);
        dedup.GetProperty("index-memory").GetInt64().ShouldBeGreaterThan(0);
        dedup.GetProperty("index-bytes-per-cluster").GetDouble().ShouldBeGreaterThan(0);

        // The feature is ours: qemu-img info-style output does not list the bit as unknown.
        document.RootElement.GetProperty("format-specific").GetProperty("data").TryGetProperty("unknown-autoclear", out _).ShouldBeFalse();
    }

    [Test]
    public void Info_on_an_image_qemu_wrote_to_reports_a_stale_index()
    {
        var image = ConvertDuplicates("stale.qcow2", copies: 2, distinct: 1);
        Qemu.Io(image, "write -P 0x42 0 4k");

        var json = CliRunner.Run("info", "--output=json", image);
        json.ExitCode.ShouldBe(0, json.Error);
        using var document = JsonDocument.Parse(json.Output);
        var dedup = document.RootElement.GetProperty("dedup");
        dedup.GetProperty("state").GetString().ShouldBe("stale");
        dedup.GetProperty("stale-reason").GetString().ShouldNotBeNullOrEmpty();

        var offline = CliRunner.Run("dedup", image); // the explicit rebuild
        offline.ExitCode.ShouldBe(0, offline.Error);
        CliRunner.Run("info", image).Output.ShouldContain("Deduplication: on\n");
        Qemu.AssertClean(image);
    }

    [Test]
    public void Info_on_a_plain_image_has_no_dedup_section()
    {
        var image = PathOf("plain.qcow2");
        Qemu.Img("create", "-f", "qcow2", image, "1M");
        CliRunner.Run("info", image).Output.ShouldNotContain("Deduplication");
        using var document = JsonDocument.Parse(CliRunner.Run("info", "--output=json", image).Output);
        document.RootElement.TryGetProperty("dedup", out _).ShouldBeFalse();
    }

    [Test]
    public void Create_with_dedup_starts_an_index_that_later_writes_use()
    {
        var image = PathOf("created.qcow2");
        var create = CliRunner.Run("create", "-f", "qcow2", "-o", "dedup=on,dedup_verify=on,dedup_max_incarnations=3", image, "64M");
        create.ExitCode.ShouldBe(0, create.Error);
        Qemu.AssertClean(image);

        var write = CliRunner.Run("io", "-c", "write -P 0x61 0 256k", "-c", "write -P 0x61 1M 256k", image);
        write.ExitCode.ShouldBe(0, write.Error);
        DedupOracle.HostDataClusters(image, ClusterSize).ShouldBe(1);
        Qemu.AssertClean(image);
        Qemu.Io(image, "read -P 0x61 0 256k", "read -P 0x61 1M 256k");
    }

    [TestCase("dedup_log_order=abc", "Parameter 'dedup_log_order' expects a number")]
    [TestCase("dedup_log_order=40", "log store order")]
    [TestCase("dedup_max_incarnations=0", "incarnations")]
    [TestCase("dedup_verify=maybe", "Parameter 'dedup_verify' expects 'on' or 'off'")]
    public void Bad_dedup_options_are_refused_and_leave_no_file(string option, string message)
    {
        var image = PathOf("bad.qcow2");
        var result = CliRunner.Run("create", "-f", "qcow2", "-o", "dedup=on," + option, image, "64M");
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain(message);
        File.Exists(image).ShouldBeFalse();
    }

    [Test]
    public void Dedup_options_without_dedup_on_are_a_usage_error()
    {
        var result = CliRunner.Run("create", "-f", "qcow2", "-o", "dedup_verify=on", PathOf("x.qcow2"), "1M");
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain("dedup_* options need dedup=on");
    }

    [Test]
    public void Offline_dedup_refuses_what_it_cannot_share_and_names_missing_files()
    {
        var extended = PathOf("ext.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "extended_l2=on", extended, "1M");
        var refused = CliRunner.Run("dedup", extended);
        refused.ExitCode.ShouldBe(1);
        refused.Error.ShouldContain("extended L2");

        var missing = CliRunner.Run("dedup", PathOf("nope.qcow2"));
        missing.ExitCode.ShouldBe(1);
        missing.Error.ShouldContain("nope.qcow2");
    }

    [Test]
    public void Offline_dedup_with_progress_prints_it_and_the_summary_on_a_pipe_too()
    {
        var image = PathOf("progress.qcow2");
        var raw = WriteDuplicates("progress.raw", copies: 4, distinct: 2);
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", raw, image);
        var result = CliRunner.Run("dedup", "-p", image);
        result.ExitCode.ShouldBe(0, result.Error);
        result.Output.ShouldContain("    (100.00/100%)\r", customMessage: "-p prints progress wherever stdout goes, as qemu-img -p does");
        result.Output.ShouldContain("6 now share another cluster");
    }

    private string ConvertDuplicates(string name, int copies, int distinct)
    {
        var raw = WriteDuplicates(Path.ChangeExtension(name, ".raw"), copies, distinct);
        var image = PathOf(name);
        var convert = CliRunner.Run("convert", "-O", "qcow2", "-o", "dedup=on", raw, image);
        convert.ExitCode.ShouldBe(0, convert.Error);
        convert.Output.ShouldContain($"Deduplication: {copies * distinct} data clusters stored in {distinct}");
        DedupOracle.AssertCleanAndEqual(image, raw);
        return image;
    }

    /// <summary>A raw disk holding <paramref name="distinct"/> contents, each in <paramref name="copies"/> clusters.</summary>
    private string WriteDuplicates(string name, int copies, int distinct)
    {
        var raw = PathOf(name);
        using var file = new FileStream(raw, FileMode.Create);
        file.SetLength(64L << 20);
        for (var copy = 0; copy < copies; copy++)
        {
            for (var content = 0; content < distinct; content++)
            {
                file.Position = ((copy * distinct) + content) * 3L * ClusterSize;
                file.Write(DedupOracle.Pattern(content + 1, ClusterSize));
            }
        }

        return raw;
    }
}
