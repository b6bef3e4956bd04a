using System.Text.Json.Nodes;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Issue 3, acceptance 3: qcow2 create honours every qemu-img option (qemu-img check is clean and
/// qemu-img info reports the same options), and images qemu-img creates with them we write cleanly.
/// </summary>
[TestFixture]
[Category("Interop")]
public class CreateOptionTests : TempDirectoryFixture
{
    private static readonly string[] OptionSets =
    [
        "compat=0.10",
        "compat=1.1",
        "cluster_size=512",
        "cluster_size=4k",
        "cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=2",
        "refcount_bits=8",
        "refcount_bits=64",
        "lazy_refcounts=on",
        "extended_l2=on,cluster_size=32k",
        "compression_type=zstd",
        "preallocation=metadata",
        "preallocation=falloc",
        "preallocation=full,cluster_size=4k",
        "data_file=image.data",
        "data_file=image.data,data_file_raw=on",
        "extended_l2=on,preallocation=metadata,cluster_size=16k",
    ];

    [TestCaseSource(nameof(OptionSets))]
    public void Our_create_matches_qemu_info_and_checks_clean(string options)
    {
        var ours = PathOf("ours.qcow2");
        var cli = CliRunner.Run("create", "-f", "qcow2", "-o", options, ours, "24M");
        cli.ExitCode.ShouldBe(0, cli.Error);
        var theirs = PathOf("theirs.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", options.Replace("image.data", "theirs.data", StringComparison.Ordinal), theirs, "24M");

        Qemu.AssertClean(ours);
        var ourInfo = Info(ours);
        var theirInfo = Info(theirs);
        ourInfo["virtual-size"]!.GetValue<long>().ShouldBe(theirInfo["virtual-size"]!.GetValue<long>());
        ourInfo["cluster-size"]!.GetValue<long>().ShouldBe(theirInfo["cluster-size"]!.GetValue<long>());
        var ourData = ourInfo["format-specific"]!["data"]!.AsObject();
        var theirData = theirInfo["format-specific"]!["data"]!.AsObject();
        ourData.Remove("data-file");
        theirData.Remove("data-file");
        JsonNode.DeepEquals(ourData, theirData).ShouldBeTrue($"ours {ourData}\ntheirs {theirData}");
        MapShape(ours).ShouldBe(MapShape(theirs));
    }

    [TestCaseSource(nameof(OptionSets))]
    public void We_write_images_qemu_created_with_the_same_options(string options)
    {
        var path = PathOf("theirs.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", options, path, "24M");
        var model = new SparseModel(24 << 20);
        var random = new Random(options.GetHashCode(StringComparison.Ordinal));
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            for (var i = 0; i < 60; i++)
            {
                var offset = random.NextInt64(0, (24 << 20) - 200_000);
                var data = new byte[random.Next(1, 200_000)];
                random.NextBytes(data);
                image.Write(offset, data);
                model.Write(offset, data);
                if (i % 10 == 9)
                {
                    var zeroAt = random.NextInt64(0, (24 << 20) - 300_000);
                    image.WriteZeroes(zeroAt, 300_000);
                    model.Zero(zeroAt, 300_000);
                }
            }
        }

        Qemu.AssertClean(path);
        var raw = PathOf("model.raw");
        model.WriteRaw(raw);
        Qemu.Compare(path, raw).ExitCode.ShouldBe(0);
    }

    private static JsonNode Info(string path) => JsonNode.Parse(Qemu.Img("info", "--output=json", path))!;

    /// <summary>Which guest bytes hold data or zeros (host offsets aside) — preallocation must match.</summary>
    private static string MapShape(string path) =>
        string.Join(";", ReadMatrixTestsMap(path).Select(e => $"{e.Start}+{e.Length}:{e.Present}/{e.Zero}/{e.Data}"));

    private static IEnumerable<MapEntry> ReadMatrixTestsMap(string path)
    {
        var entries = Interop.ReadMatrixTests.ParseQemuMap(Qemu.Img("map", "--output=json", path));
        // Merge neighbours that differ only in host offset.
        var merged = new List<MapEntry>();
        foreach (var entry in entries)
        {
            if (merged.Count > 0 && merged[^1] is var last && last.Present == entry.Present && last.Zero == entry.Zero && last.Data == entry.Data && last.End == entry.Start)
            {
                merged[^1] = last with { Length = last.Length + entry.Length };
            }
            else
            {
                merged.Add(entry);
            }
        }

        return merged;
    }
}
