using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 snapshot [-f qcow2] [-q] (-l | -c NAME | -a NAME | -d NAME) FILE — internal snapshots, as qemu-img snapshot.</summary>
internal static class SnapshotCommand
{
    public const string Usage = "qcow2 snapshot [-f qcow2] [-q] (-l | -c NAME | -a NAME | -d NAME) FILE";

    private static readonly string[] Actions = ["-l", "-c", "-a", "-d"];

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-c", "-a", "-d"], ["-l", "-q", .. ImageOptions.ForceShareFlags], ImageArguments.First);
        line.ExpectPositionals(1, 1, Usage);
        var actions = Actions.Where(line.Has).ToList();
        if (actions.Count > 1)
        {
            throw new UsageException("give only one of -l, -c, -a and -d");
        }

        var path = line.Positionals[0];
        FileArguments.CheckInput(path);
        var format = line.Value("-f") ?? DiskSource.ProbeFormat(path);
        if (format != "qcow2")
        {
            // qemu-img lists a raw file's (absent) snapshots as nothing and exits 0; it cannot change them.
            return actions is [] or ["-l"] && format == "raw"
                ? 0
                : throw new UsageException($"only qcow2 images have internal snapshots, not '{format}'");
        }

        if (actions.Count == 0)
        {
            // As qemu-img: with no action the image is opened (so a missing or damaged file still fails) and left alone.
            using var untouched = FileArguments.OpenImage(path, ImageOptions.For(line, path) with { BackingFiles = BackingFileMode.Ignore });
            return 0;
        }

        if (actions[0] == "-l")
        {
            using var image = FileArguments.OpenImage(path, ImageOptions.For(line, path) with { BackingFiles = BackingFileMode.Ignore });
            if (image.Snapshots.Count > 0)
            {
                Console.Out.WriteLine("Snapshot list:");
                Console.Out.WriteLine(SnapshotTable.Header);
                foreach (var snapshot in image.Snapshots)
                {
                    Console.Out.WriteLine(SnapshotTable.Row(snapshot));
                }
            }

            return 0;
        }

        var name = line.Value(actions[0])!;
        using var writable = FileArguments.OpenImage(path, ImageOptions.For(line, path, writable: true) with { BackingFiles = BackingFileMode.Ignore });
        // qemu-img 7.2: -d matches names only (bdrv_snapshot_find), -a ids first, then names (find_snapshot_by_id_or_name).
        var (verb, action) = actions[0] switch
        {
            "-c" => ("create", (Action)(() => writable.CreateSnapshot(name))),
            "-a" => ("apply", () => writable.ApplySnapshot(name, SnapshotLookup.IdThenName)),
            _ => ("delete", () => writable.DeleteSnapshot(name, SnapshotLookup.Name)),
        };
        try
        {
            action();
        }
        catch (Exception error) when (error is KeyNotFoundException or NotSupportedException or InvalidOperationException)
        {
            var reason = error is KeyNotFoundException ? NotFoundReason(verb) : error.Message;
            Console.Error.WriteLine($"qcow2: Could not {verb} snapshot '{name}': {reason}");
            return 1;
        }

        return 0;
    }

    /// <summary>qemu-img's wording: its own for -d, the qcow2 driver's ENOENT for -a.</summary>
    private static string NotFoundReason(string verb) =>
        verb == "apply" ? "Failed to load snapshot: No such file or directory" : "snapshot not found";
}
