using System.Diagnostics;
using System.Globalization;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Benchmarks;

/// <summary>What inline deduplication costs and saves: hashing, writes, convert, index memory.</summary>
internal static class DedupBenchmarks
{
    private const long Size = 1L << 30;

    /// <summary>SHA-256 over whole clusters on one core: the ceiling of the dedup write path.</summary>
    public static void Hash(string work)
    {
        foreach (var clusterSize in new[] { 4096, 65536 })
        {
            var cluster = new byte[clusterSize];
            new Random(1).NextBytes(cluster);
            var total = 1L << 30;
            ClusterHash.Compute(cluster);
            var timer = Stopwatch.StartNew();
            for (long done = 0; done < total; done += clusterSize)
            {
                cluster[0]++;
                ClusterHash.Compute(cluster);
            }

            Tools.Report("dedup-hash", $"SHA-256 of {clusterSize}-byte clusters (MiB/s)", (1024 / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
        }
    }

    /// <summary>1 GiB of 64 KiB writes, half of them repeating earlier contents, with and without dedup.</summary>
    public static void Write(string work)
    {
        foreach (var dedup in new[] { false, true })
        {
            var path = Path.Combine(work, $"dedup-write-{dedup}.qcow2");
            var options = new Qcow2CreateOptions { Size = Size };
            var timer = Stopwatch.StartNew();
            using (var image = Qcow2Image.Create(path, dedup ? options.WithDedup() : options))
            {
                WriteHalfDuplicates(image, 65536);
            }

            timer.Stop();
            var label = dedup ? "dedup" : "plain";
            Tools.Report("dedup-write", $"1 GiB, 50% duplicates, {label} (MiB/s)", (1024 / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
            Tools.Report("dedup-write", $"  file size, {label} (MiB)", (new FileInfo(path).Length / 1048576.0).ToString("0.0", CultureInfo.InvariantCulture));
            File.Delete(path);
        }
    }

    /// <summary>The CLI converting a raw disk with duplicates: ours plain, ours with dedup, qemu-img.</summary>
    public static void Convert(string work)
    {
        var raw = Path.Combine(work, "dedup-source.raw");
        using (var image = new FileStream(raw, FileMode.Create))
        {
            image.SetLength(Size);
            var pool = Pool(64, 65536);
            var unique = new byte[65536];
            new Random(5).NextBytes(unique);
            for (long offset = 0, i = 0; offset < Size; offset += 65536, i++)
            {
                BitConverter.TryWriteBytes(unique, i);
                image.Write(i % 2 == 0 ? unique : pool[i % pool.Length]);
            }
        }

        var cli = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "qcow2");
        foreach (var (label, tool, args) in new[]
        {
            ("ours plain", cli, new[] { "convert", "-O", "qcow2" }),
            ("ours dedup=on", cli, new[] { "convert", "-O", "qcow2", "-o", "dedup=on" }),
            ("qemu-img", "qemu-img", new[] { "convert", "-f", "raw", "-O", "qcow2" }),
        })
        {
            var output = Path.Combine(work, "dedup-convert.qcow2");
            var timer = Stopwatch.StartNew();
            Tools.Run(tool, [.. args, raw, output]);
            Tools.Report("dedup-convert", $"1 GiB raw, 50% duplicates, {label} (s, MiB)", string.Create(CultureInfo.InvariantCulture,
                $"{timer.Elapsed.TotalSeconds:0.00}, {new FileInfo(output).Length / 1048576.0:0.0}"));
            File.Delete(output);
        }

        File.Delete(raw);
    }

    /// <summary>
    /// Index RAM per indexed cluster after the log store froze a few times (1 GiB of unique 4 KiB
    /// clusters), then the same contents written again elsewhere: hits found in frozen incarnations.
    /// </summary>
    public static void IndexMemory(string work)
    {
        var path = Path.Combine(work, "dedup-index.qcow2");
        const long Half = 1L << 30;
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 2 * Half, ClusterSize = 4096 }.WithDedup()))
        {
            var cluster = new byte[4096];
            new Random(6).NextBytes(cluster);
            var timer = Stopwatch.StartNew();
            for (long i = 0; i < Half / 4096; i++)
            {
                BitConverter.TryWriteBytes(cluster, i);
                image.Write(i * 4096, cluster);
            }

            timer.Stop();
            var stats = image.GetDedupStatistics();
            Tools.Report("dedup-index", $"{Half / 4096} unique 4 KiB clusters written (MiB/s)", (1024 / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
            Tools.Report("dedup-index", "  indexed entries (log store + incarnations)", stats.IndexedClusters.ToString(CultureInfo.InvariantCulture));
            Tools.Report("dedup-index", "  incarnations, fill rate at freeze", string.Create(CultureInfo.InvariantCulture, $"{stats.IncarnationEntries.Count}, {stats.IncarnationFillRate:P1}"));
            Tools.Report("dedup-index", "  index RAM (KiB), bytes per indexed cluster", string.Create(CultureInfo.InvariantCulture, $"{stats.IndexMemoryBytes / 1024}, {stats.IndexBytesPerIndexedCluster:0.0}"));
            Tools.Report("dedup-index", "  frozen incarnations: RAM (KiB), bytes per entry", string.Create(CultureInfo.InvariantCulture, $"{stats.IncarnationMemoryBytes / 1024}, {stats.IncarnationBytesPerEntry:0.00}"));
            Tools.Report("dedup-index", "  log store: RAM budget (KiB), entries, capacity", string.Create(CultureInfo.InvariantCulture, $"{stats.LogStoreMemoryBytes / 1024}, {stats.LogStoreEntries}, {stats.LogStoreCapacity}"));

            const int Again = 65536;
            timer.Restart();
            for (long i = 0; i < Again; i++)
            {
                BitConverter.TryWriteBytes(cluster, i);
                image.Write(Half + (i * 4096), cluster);
            }

            timer.Stop();
            var after = image.GetDedupStatistics();
            Tools.Report("dedup-index", $"{Again} oldest contents written again: shared / written", string.Create(CultureInfo.InvariantCulture,
                $"{after.ClustersDeduplicated - stats.ClustersDeduplicated} / {Again}"));
            Tools.Report("dedup-index", "  rewrite rate, hits mostly in incarnations (MiB/s)", (Again * 4096.0 / 1048576 / timer.Elapsed.TotalSeconds).ToString("0", CultureInfo.InvariantCulture));
        }

        File.Delete(path);
    }

    private static void WriteHalfDuplicates(Qcow2Image image, int clusterSize)
    {
        var pool = Pool(64, clusterSize);
        var unique = new byte[clusterSize];
        new Random(4).NextBytes(unique);
        for (long offset = 0, i = 0; offset < image.Size; offset += clusterSize, i++)
        {
            if (i % 2 == 0)
            {
                BitConverter.TryWriteBytes(unique, i);
                image.Write(offset, unique);
            }
            else
            {
                image.Write(offset, pool[i % pool.Length]);
            }
        }
    }

    private static byte[][] Pool(int count, int clusterSize)
    {
        var random = new Random(7);
        var pool = new byte[count][];
        for (var i = 0; i < count; i++)
        {
            pool[i] = new byte[clusterSize];
            random.NextBytes(pool[i]);
        }

        return pool;
    }
}
