using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 rebase [-f qcow2] [-u] [-p] [-q] -b BACKING [-F FMT] FILE — change the backing file, as qemu-img rebase.</summary>
internal static class RebaseCommand
{
    public const string Usage = "qcow2 rebase [-f qcow2] [-t CACHE] [-T SRC_CACHE] [-u] [-U] [-p] [-q] -b BACKING [-F FMT] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-b", "-F", "-t", "-T"], ["-u", "-p", "-q", .. ImageOptions.ForceShareFlags], ImageArguments.First);
        ImageOptions.CheckCacheModes(line);
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 images can be rebased, not '{format}'");
        }

        if (line.Value("-b") is not { } backing)
        {
            throw new UsageException("-b BACKING is required (use -b \"\" to remove the backing file)");
        }

        var backingFormat = line.Value("-F");
        if (backing.Length > 0 && backingFormat is null)
        {
            // qemu-img 7.2 no longer guesses (a probed raw file could be read as anything).
            throw new QemuArgumentError($"Could not change the backing file to '{backing}': backing format must be specified");
        }

        if (backingFormat is not (null or "qcow2" or "raw"))
        {
            throw new UsageException($"unknown backing format '{backingFormat}' (use qcow2 or raw)");
        }

        var unsafeRebase = line.Has("-u");
        // -U shares the backing files read-only; the image itself is written, so it is locked as usual.
        var options = ImageOptions.For(line, line.Positionals[0], writable: true) with { ForceShare = false, BackingFiles = unsafeRebase ? BackingFileMode.Ignore : BackingFileMode.Open };
        if (backing.Length > 0 && !unsafeRebase)
        {
            var resolved = DefaultBackingFileResolver.TryResolvePath(backing, FilePaths.Absolute(line.Positionals[0]));
            if (resolved is null || !File.Exists(resolved))
            {
                throw new QemuArgumentError($"Could not open new backing file '{backing}': Could not open '{backing}': No such file or directory");
            }
        }

        using var image = FileArguments.OpenImage(line.Positionals[0], options);
        var progress = new Progress(line.Has("-p") && !line.Has("-q") && !unsafeRebase);
        image.Rebase(backing.Length == 0 ? null : backing, backingFormat, unsafeRebase, progress); // reported on the working thread, so none lands after Finish
        progress.Finish();
        return 0;
    }
}
