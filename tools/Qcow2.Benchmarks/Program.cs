using System.Diagnostics;
using QcowDedup.Benchmarks;

// Speed and memory targets are measured here, never in unit tests. Usage:
//   dotnet run -c Release --project tools/Qcow2.Benchmarks -- [benchmark ...]
// With no arguments every benchmark runs. Each prints one line per measurement.
// "micro" instead runs the BenchmarkDotNet micro-benchmarks (MicroBenchmarks.cs); arguments after it go to BenchmarkDotNet.
if (args is ["micro", .. var microArgs])
{
    return MicroBenchmarks.Run(microArgs);
}

var all = new Dictionary<string, Action<string>>(StringComparer.Ordinal)
{
    ["open-1t"] = OpenBenchmarks.OpenHugeSparseImage,
    ["read-seq"] = ReadBenchmarks.SequentialRead,
    ["write-seq"] = WriteBenchmarks.SequentialWrite,
    ["write-rand"] = WriteBenchmarks.RandomWrite,
    ["write-rewrite"] = WriteBenchmarks.Rewrite,
    ["convert"] = WriteBenchmarks.Convert,
    ["dedup-hash"] = DedupBenchmarks.Hash,
    ["dedup-write"] = DedupBenchmarks.Write,
    ["dedup-convert"] = DedupBenchmarks.Convert,
    ["dedup-index"] = DedupBenchmarks.IndexMemory,
};

var selected = args.Length == 0 ? [.. all.Keys] : args;
var work = Path.Combine(Path.GetTempPath(), $"qcowdedup-bench-{Environment.ProcessId}");
Directory.CreateDirectory(work);
try
{
    foreach (var name in selected)
    {
        if (!all.TryGetValue(name, out var run))
        {
            Console.Error.WriteLine($"unknown benchmark '{name}'; known: {string.Join(", ", all.Keys)}");
            return 1;
        }

        run(work);
    }
}
finally
{
    Directory.Delete(work, recursive: true);
}

return 0;

namespace QcowDedup.Benchmarks
{
    internal static class Tools
    {
        public static void Run(string tool, params string[] args)
        {
            var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var arg in args)
            {
                start.ArgumentList.Add(arg);
            }

            using var process = Process.Start(start)!;
            process.StandardOutput.ReadToEnd();
            var error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                throw new InvalidOperationException($"{tool} failed: {error}");
            }
        }

        public static void Report(string benchmark, string measurement, string value) =>
            Console.Out.WriteLine($"{benchmark,-12} {measurement,-40} {value}");
    }
}
