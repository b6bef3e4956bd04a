using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 commit [-f qcow2] [-d] [-p] [-q] FILE — write an overlay into its backing file, as qemu-img commit.</summary>
internal static class CommitCommand
{
    public const string Usage = "qcow2 commit [-f qcow2] [-t CACHE] [-b BASE] [-d] [-r RATE] [-p] [-q] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-b", "-t", "-r"], ["-d", "-p", "-q"]);
        ImageOptions.CheckCacheModes(line);
        var rate = line.Value("-r") is { } rateText ? Sizes.Cvtnum("rate limit", rateText) : 0;
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 overlays can be committed, not '{format}'");
        }

        var path = line.Positionals[0];
        using var image = FileArguments.OpenImage(path, ImageOptions.For(line, path, writable: true));
        if (line.Value("-b") is { } requested && !SameFile(requested, image.BackingChain.ElementAtOrDefault(1)?.Path))
        {
            throw new UsageException($"'{requested}' is not the backing file of '{path}'; committing further down the chain is not supported");
        }

        var progress = new Progress(line.Has("-p") && !line.Has("-q"));
        image.Commit(keepOverlay: line.Has("-d"), ImageOptions.For(line, path, writable: true), new RateLimitedProgress(progress, rate, image.Size));
        progress.Finish();
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine("Image committed.");
        }

        return 0;
    }

    private static bool SameFile(string given, string? backing) =>
        backing is not null && FileStorage.IsSameFile(given, backing);
}
