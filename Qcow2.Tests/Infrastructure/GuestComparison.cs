using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>
/// Compares an image's guest view, read through <see cref="Qcow2Stream"/>, with a raw file made by
/// qemu-img convert. Small disks are compared byte for byte; huge sparse disks (2 MiB clusters put
/// an L2 boundary at 256 GiB) are compared on every range either side stores data, plus samples.
/// </summary>
public static class GuestComparison
{
    private const long FullCompareLimit = 256L << 20;
    private const int Window = 1 << 20;

    public static void AssertEqual(Qcow2Image image, string rawPath)
    {
        using var raw = FileStorage.Open(rawPath, writable: false);
        image.Size.ShouldBe(raw.Length, "virtual size vs raw length");
        using var stream = image.OpenStream();
        foreach (var (start, end) in RangesToCompare(image, raw))
        {
            CompareRange(stream, raw, start, end);
        }
    }

    private static IEnumerable<(long Start, long End)> RangesToCompare(Qcow2Image image, FileStorage raw)
    {
        var size = image.Size;
        if (size <= FullCompareLimit)
        {
            return [(0, size)];
        }

        var ranges = new List<(long, long)>();
        foreach (var entry in image.GetMap(0, size).Where(e => e.Data || !e.Zero))
        {
            ranges.Add((entry.Start, entry.End));
        }

        for (long position = 0; position < size;)
        {
            if (!raw.TryGetDataExtent(position, out var isData, out var end) || end <= position)
            {
                ranges.Add((position, size));
                break;
            }

            if (isData)
            {
                ranges.Add((position, end));
            }

            position = end;
        }

        var random = new Random(1234);
        ranges.Add((0, Math.Min(size, Window)));
        ranges.Add((size - Math.Min(size, Window), size));
        for (var i = 0; i < 8; i++)
        {
            var start = (long)(random.NextDouble() * (size - Window)) & ~4095L;
            ranges.Add((start, start + Window));
        }

        return ranges;
    }

    private static void CompareRange(Stream stream, FileStorage raw, long start, long end)
    {
        var expected = new byte[Window];
        var actual = new byte[Window];
        for (var position = start; position < end; position += Window)
        {
            var length = (int)Math.Min(Window, end - position);
            var read = raw.Read(position, expected.AsSpan(0, length));
            expected.AsSpan(read, length - read).Clear();
            stream.Position = position;
            stream.ReadExactly(actual, 0, length);
            var same = actual.AsSpan(0, length).CommonPrefixLength(expected.AsSpan(0, length));
            if (same < length)
            {
                Assert.Fail($"Guest byte {position + same} (0x{position + same:x}) reads 0x{actual[same]:x2}, qemu-img convert says 0x{expected[same]:x2}");
            }
        }
    }
}
