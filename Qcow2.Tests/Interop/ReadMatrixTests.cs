using System.Text.Json;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Interop;

[TestFixture]
[Category("Interop")]
public class ReadMatrixTests : TempDirectoryFixture
{
    [TestCaseSource(typeof(ReadMatrix), nameof(ReadMatrix.Cells))]
    public void Guest_view_read_through_the_stream_equals_qemu_img_convert(ReadCell cell)
    {
        var builder = new ImageBuilder(Directory);
        var built = cell.Build(builder);
        using var image = Qcow2Image.Open(built.Path);
        GuestComparison.AssertEqual(image, builder.ToRaw(built.Path));
        foreach (var snapshot in built.Snapshots)
        {
            using var view = image.OpenSnapshot(snapshot, SnapshotLookup.Name);
            GuestComparison.AssertEqual(view, builder.ToRaw(built.Path, snapshot));
        }
    }

    [TestCaseSource(typeof(ReadMatrix), nameof(ReadMatrix.Cells))]
    public void Map_agrees_with_qemu_img_map(ReadCell cell)
    {
        var built = cell.Build(new ImageBuilder(Directory));
        var expected = ParseQemuMap(Qemu.Img("map", "--output=json", built.Path));
        using var image = Qcow2Image.Open(built.Path);
        var actual = image.GetMap(0, image.Size);
        MapComparison.Differences(expected, actual).ShouldBeEmpty();
    }

    internal static List<MapEntry> ParseQemuMap(string json)
    {
        using var document = JsonDocument.Parse(json);
        return document.RootElement.EnumerateArray().Select(e => new MapEntry(
            e.GetProperty("start").GetInt64(),
            e.GetProperty("length").GetInt64(),
            e.GetProperty("depth").GetInt32(),
            e.GetProperty("present").GetBoolean(),
            e.GetProperty("zero").GetBoolean(),
            e.GetProperty("data").GetBoolean(),
            e.TryGetProperty("offset", out var offset) ? offset.GetInt64() : null,
            null)).ToList();
    }
}

/// <summary>Compares two block-status maps piece by piece, independent of how each merged its entries.</summary>
public static class MapComparison
{
    public static List<string> Differences(IReadOnlyList<MapEntry> expected, IReadOnlyList<MapEntry> actual)
    {
        var boundaries = expected.Concat(actual).SelectMany(e => new[] { e.Start, e.End }).Distinct().Order().ToList();
        var differences = new List<string>();
        for (var i = 0; i + 1 < boundaries.Count && differences.Count < 10; i++)
        {
            var start = boundaries[i];
            var e = Describe(expected, start);
            var a = Describe(actual, start);
            if (e != a)
            {
                differences.Add($"[{start:#,0}, {boundaries[i + 1]:#,0}): qemu-img says {e}, we say {a}");
            }
        }

        return differences;
    }

    private static string Describe(IReadOnlyList<MapEntry> entries, long position)
    {
        var entry = entries.FirstOrDefault(e => e.Start <= position && position < e.End);
        if (entry.Length == 0)
        {
            return "nothing";
        }

        var offset = entry.Offset is long o ? (o + position - entry.Start).ToString(System.Globalization.CultureInfo.InvariantCulture) : "-";
        return $"depth={entry.Depth} present={entry.Present} zero={entry.Zero} data={entry.Data} offset={offset}";
    }
}
