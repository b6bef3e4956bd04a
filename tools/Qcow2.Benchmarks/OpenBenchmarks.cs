using System.Diagnostics;
using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Benchmarks;

/// <summary>Issue 2, acceptance 6: a 1 TiB sparse image opens and reports info in well under a second, with small memory.</summary>
internal static class OpenBenchmarks
{
    public static void OpenHugeSparseImage(string work)
    {
        var path = Path.Combine(work, "sparse-1t.qcow2");
        Tools.Run("qemu-img", "create", "-q", "-f", "qcow2", path, "1T");
        Tools.Run("qemu-io", "-c", "write -P 1 0 64k", "-c", "write -P 2 512G 64k", "-c", "write -P 3 1023G 64k", path);

        // Warm the JIT on another image so the measurement is the open itself.
        var warm = Path.Combine(work, "warm.qcow2");
        Tools.Run("qemu-img", "create", "-q", "-f", "qcow2", warm, "1G");
        using (var image = Qcow2Image.Open(warm))
        {
            _ = image.Info;
        }

        GC.Collect();
        var allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        var timer = Stopwatch.StartNew();
        using (var image = Qcow2Image.Open(path))
        {
            var info = image.Info;
            var buffer = new byte[4096];
            image.Read(512L << 30, buffer);
            image.Read(1023L << 30, buffer);
            timer.Stop();
            Tools.Report("open-1t", "virtual size", info.VirtualSize.ToString(CultureInfo.InvariantCulture));
        }

        var allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
        Tools.Report("open-1t", "open + info + 2 reads (ms)", timer.Elapsed.TotalMilliseconds.ToString("0.0", CultureInfo.InvariantCulture));
        Tools.Report("open-1t", "managed bytes allocated", allocated.ToString("#,0", CultureInfo.InvariantCulture));
        Tools.Report("open-1t", "process working set (MiB)", (Environment.WorkingSet / 1048576.0).ToString("0.0", CultureInfo.InvariantCulture));
    }
}
