using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 commit [-f qcow2] [-d] [-p] [-q] FILE — write an overlay into its backing file, as qemu-img commit.</summary>
internal static class CommitCommand
{
    public const string Usage = "qcow2 commit [-f qcow2] [-t CACHE] [-b BASE] [-d] [-r RATE] [-p] [-q] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-b", "-t", "-r"], ["-d", "-p", "-q"], ImageArguments.First);
        ImageOptions.CheckCacheModes(line);
        var rate = line.Value("-r") is { } rateText ? Sizes.Cvtnum("rate limit", rateText) : 0;
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 overlays can be committed, not '{format}'");
        }

        var path = line.Positionals[0];
        var progress = new Progress(line.Has("-p") && !line.Has("-q"));
        var keep = line.Has("-d") || line.Value("-b") is not null; // as in qemu-img, -b implies -d
        if (line.Value("-b") is { } requested)
        {
            int depth;
            using (var chain = FileArguments.OpenImage(path, ImageOptions.For(line, path) with { ForceShare = true }))
            {
                depth = chain.BackingChain.Skip(1).FirstOrDefault(e => SameFile(requested, e.Path))?.Depth
                    ?? throw new QemuArgumentError($"Did not find '{requested}' in the backing chain of '{path}'");
            }

            if (depth > 1)
            {
                CommitBelow(line, path, depth, progress, rate);
                return Committed(line, progress);
            }
        }

        using var image = FileArguments.OpenImage(path, ImageOptions.For(line, path, writable: true));
        image.Commit(keepOverlay: keep, ImageOptions.For(line, path, writable: true), new RateLimitedProgress(progress, rate, image.Size));
        return Committed(line, progress);
    }

    /// <summary>
    /// -b BASE below the direct backing file: every range the layers above BASE decide (data and
    /// zeros) is written into BASE, grown first if smaller; the images above it stay as they are
    /// (qemu-img's commit to a deeper base keeps them, -b implying -d). The chain is read with
    /// force-share while BASE is written through its own open: only ranges above BASE are read.
    /// </summary>
    private static void CommitBelow(CommandLine line, string path, int baseDepth, Progress display, long rate)
    {
        using var top = FileArguments.OpenImage(path, ImageOptions.For(line, path) with { ForceShare = true });
        var basePath = top.BackingChain[baseDepth].Path ?? throw new IOException($"The backing file at depth {baseDepth} of '{path}' has no path to write to");
        if (top.BackingChain[baseDepth].Format != "qcow2")
        {
            throw new UsageException($"only a qcow2 base can be committed into further down the chain, not '{top.BackingChain[baseDepth].Format}'");
        }

        var ranges = top.GetMap(0, top.Size).Where(e => e.Depth < baseDepth && (e.Present || e.Zero)).ToList();
        using var target = Qcow2Image.Open(basePath, ImageOptions.For(line, basePath, writable: true) with { ForceShare = false, BackingFiles = BackingFileMode.Ignore });
        if (target.Size < top.Size)
        {
            target.Resize(top.Size);
        }

        var buffer = new byte[2 << 20];
        var total = Math.Max(1, ranges.Sum(r => r.Length));
        var progress = new RateLimitedProgress(display, rate, total);
        var done = 0L;
        foreach (var range in ranges)
        {
            for (var at = range.Start; at < range.End;)
            {
                var count = (int)Math.Min(buffer.Length, range.End - at);
                if (range.Zero && !range.Data)
                {
                    target.WriteZeroes(at, count);
                }
                else
                {
                    top.Read(at, buffer.AsSpan(0, count));
                    target.Write(at, buffer.AsSpan(0, count));
                }

                at += count;
                done += count;
                progress.Report((double)done / total);
            }
        }

        target.Flush();
    }

    private static int Committed(CommandLine line, Progress progress)
    {
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
