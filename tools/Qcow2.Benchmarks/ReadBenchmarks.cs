using System.Diagnostics;
using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Benchmarks;

/// <summary>Sequential read throughput of a fully allocated image through the Stream API.</summary>
internal static class ReadBenchmarks
{
    private const long Size = 1L << 30;

    public static void SequentialRead(string work)
    {
        var path = Path.Combine(work, "full.qcow2");
        Tools.Run("qemu-img", "create", "-q", "-f", "qcow2", path, "1G");
        Tools.Run("qemu-io", "-c", "write -P 0x5a 0 1G", path);
        foreach (var blockSize in new[] { 4096, 65536, 1 << 20 })
        {
            using var image = Qcow2Image.Open(path);
            using var stream = image.OpenStream();
            var buffer = new byte[blockSize];
            var timer = Stopwatch.StartNew();
            while (stream.Read(buffer, 0, buffer.Length) > 0)
            {
            }

            timer.Stop();
            var mibPerSecond = Size / 1048576.0 / timer.Elapsed.TotalSeconds;
            Tools.Report("read-seq", $"1 GiB in {blockSize}-byte reads (MiB/s)", mibPerSecond.ToString("0", CultureInfo.InvariantCulture));
        }
    }
}
