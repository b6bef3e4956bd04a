using System.Globalization;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 dedup [-p] [-o dedup_OPTIONS] FILE — deduplicate an existing image in place.</summary>
internal static class DedupCommand
{
    public const string Usage = "qcow2 dedup [-p] [-q] [-o dedup_log_order=N,dedup_max_incarnations=N,dedup_verify=on,...] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-o"], ["-p", "-q"]);
        line.ExpectPositionals(1, 1, Usage);
        var options = Extensions.DedupOptionsFrom(CreateOptionParser.ForDedup(line.Values("-o")))!;
        var path = line.Positionals[0];
        FileArguments.CheckInput(path);
        var progress = new Progress(line.Has("-p") && !line.Has("-q"));
        using var image = Qcow2Image.Open(path, ImageOptions.For(line, path, writable: true).WithDedup(options with { Enable = true }));
        var result = OfflineDeduplicator.Run(image, progress);
        progress.Finish();
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Scanned {result.ClustersScanned} data clusters: {result.ClustersShared} now share another cluster, {result.ZeroClusters} were zeros; {Sizes.Format(result.BytesFreed)} freed."));
        }

        return 0;
    }

    /// <summary>One line saying what deduplication saved.</summary>
    public static string Summary(DedupStatistics stats) => string.Create(CultureInfo.InvariantCulture,
        $"Deduplication: {stats.References} data clusters stored in {stats.UniqueClusters} ({stats.SharedReferences} shared), saved {Sizes.Format(stats.BytesSaved)} ({stats.BytesSaved} bytes), ratio {stats.DedupRatio:0.00}");
}
