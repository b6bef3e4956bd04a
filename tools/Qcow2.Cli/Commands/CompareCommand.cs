using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 compare [-f FMT] [-F FMT] [-s] A B — exit 0 when the guest contents are equal, 1 when they
/// differ, 2 on error. A shorter image compares as if padded with zeros, like qemu-img (unless -s).
/// </summary>
internal static class CompareCommand
{
    public const string Usage = "qcow2 compare [-f FMT] [-F FMT] [-T SRC_CACHE] [-s] [-p] A B";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-F", "-T"], ["-s", "-p", "-q", "-U", "--force-share"]);
        ImageOptions.CheckCacheModes(line, exitCode: 2);
        line.ExpectPositionals(2, 2, Usage);
        using var first = Disks.Open(line.Positionals[0], line.Value("-f"), ImageOptions.For(line, line.Positionals[0]));
        using var second = Disks.Open(line.Positionals[1], line.Value("-F"), ImageOptions.For(line, line.Positionals[1]));
        var quiet = line.Has("-q");
        if (first.Size != second.Size)
        {
            if (line.Has("-s"))
            {
                Say(quiet, "Strict mode: Image size mismatch!");
                return 1;
            }

            Say(quiet, "Warning: Image size mismatch!");
        }

        var progress = new Progress(line.Has("-p"));
        var mismatch = DiskComparer.FindFirstDifference(first, second, progress);
        progress.Finish();
        if (mismatch is long offset)
        {
            Say(quiet, $"Content mismatch at offset {offset}!");
            return 1;
        }

        Say(quiet, "Images are identical.");
        return 0;
    }

    private static void Say(bool quiet, string message)
    {
        if (!quiet)
        {
            Console.Out.WriteLine(message);
        }
    }
}
