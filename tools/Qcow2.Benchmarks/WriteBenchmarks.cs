using System.Diagnostics;
using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Benchmarks;

/// <summary>Write throughput and conversion time, measured against qemu-img on the same input.</summary>
internal static class WriteBenchmarks
{
    private const long Size = 1L << 30;

    public static void SequentialWrite(string work)
    {
        Warm(work);
        foreach (var blockSize in new[] { 65536, 1 << 20 })
        {
            var path = Path.Combine(work, $"seq-{blockSize}.qcow2");
            var block = new byte[blockSize];
            new Random(1).NextBytes(block);
            var timer = Stopwatch.StartNew();
            using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = Size }))
            {
                for (long offset = 0; offset < Size; offset += blockSize)
                {
                    block[0] = (byte)offset; // distinct clusters
                    image.Write(offset, block);
                }
            }

            timer.Stop();
            Tools.Report("write-seq", $"1 GiB in {blockSize}-byte writes + close (MiB/s)", (1024 / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
            File.Delete(path);
        }
    }

    /// <summary>Rewriting allocated clusters in place: 1 GiB written, then written again 4 times in 1 MiB writes.</summary>
    public static void Rewrite(string work)
    {
        Warm(work);
        const int blockSize = 1 << 20;
        foreach (var clusterSize in new[] { 65536, 4096 })
        {
            var path = Path.Combine(work, "rewrite.qcow2");
            var block = new byte[blockSize];
            new Random(3).NextBytes(block);
            using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = Size, ClusterSize = clusterSize }))
            {
                for (long offset = 0; offset < Size; offset += blockSize)
                {
                    image.Write(offset, block);
                }

                var timer = Stopwatch.StartNew();
                for (var round = 0; round < 4; round++)
                {
                    block[0]++;
                    for (long offset = 0; offset < Size; offset += blockSize)
                    {
                        image.Write(offset, block);
                    }
                }

                image.Flush();
                timer.Stop();
                Tools.Report("write-rewrite", $"4 GiB rewritten in place, 1 MiB writes, {clusterSize / 1024} KiB clusters (MiB/s)", (4096 / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
            }

            File.Delete(path);
        }
    }

    public static void RandomWrite(string work)
    {
        Warm(work);
        var path = Path.Combine(work, "rand.qcow2");
        var random = new Random(2);
        var block = new byte[4096];
        random.NextBytes(block);
        const int Writes = 50_000;
        var timer = Stopwatch.StartNew();
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = Size }))
        {
            for (var i = 0; i < Writes; i++)
            {
                image.Write(random.NextInt64(0, Size / 4096) * 4096, block);
            }
        }

        timer.Stop();
        Tools.Report("write-rand", $"{Writes} random 4 KiB writes on a fresh 1 GiB image (IOPS)", (Writes / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
    }

    public static void Convert(string work)
    {
        var raw = Path.Combine(work, "convert-source.raw");
        MakeMixedRaw(raw, 512L << 20);
        var cli = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "qcow2");
        foreach (var (label, extra) in new[] { ("plain", Array.Empty<string>()), ("zlib -c", new[] { "-c" }) })
        {
            var ours = Time(() => Tools.Run(cli, ["convert", .. extra, "-O", "qcow2", raw, Path.Combine(work, "ours.qcow2")]));
            var qemu = Time(() => Tools.Run("qemu-img", ["convert", .. extra, "-f", "raw", "-O", "qcow2", raw, Path.Combine(work, "qemu.qcow2")]));
            Tools.Report("convert", $"512 MiB mixed raw -> qcow2 {label}: ours / qemu-img (s)", string.Create(CultureInfo.InvariantCulture, $"{ours:0.00} / {qemu:0.00}"));
            Tools.Report("convert", $"  output size {label}: ours / qemu-img (MiB)", string.Create(CultureInfo.InvariantCulture,
                $"{new FileInfo(Path.Combine(work, "ours.qcow2")).Length / 1048576.0:0.0} / {new FileInfo(Path.Combine(work, "qemu.qcow2")).Length / 1048576.0:0.0}"));
        }
    }

    /// <summary>Runs the write path once on a small image so the measurement excludes JIT time.</summary>
    private static void Warm(string work)
    {
        var path = Path.Combine(work, "warm.qcow2");
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64 << 20 }))
        {
            var block = new byte[1 << 20];
            new Random(9).NextBytes(block);
            for (long offset = 0; offset < (64 << 20); offset += block.Length)
            {
                image.Write(offset, block);
                image.Write(offset + 4096, block.AsSpan(0, 4096));
            }
        }

        File.Delete(path);
    }

    /// <summary>Half random data, a quarter zeros, a quarter repeated text.</summary>
    internal static void MakeMixedRaw(string path, long size)
    {
        using var file = new FileStream(path, FileMode.Create);
        file.SetLength(size);
        var random = new Random(3);
        var chunk = new byte[1 << 20];
        var text = "qcow2 benchmark text, repeated to be compressible. "u8.ToArray();
        for (long offset = 0; offset < size; offset += chunk.Length)
        {
            switch (offset / chunk.Length % 4)
            {
                case 0:
                case 1:
                    random.NextBytes(chunk);
                    break;
                case 2:
                    continue; // zeros: leave the hole
                default:
                    for (var i = 0; i < chunk.Length; i++)
                    {
                        chunk[i] = text[i % text.Length];
                    }

                    break;
            }

            file.Position = offset;
            file.Write(chunk);
        }
    }

    private static double Time(Action action)
    {
        var timer = Stopwatch.StartNew();
        action();
        return timer.Elapsed.TotalSeconds;
    }
}
