using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 bitmap — persistent dirty bitmaps, as qemu-img bitmap: the actions run in the order
/// given, and the first that fails ends the command (those before it stay done).
/// </summary>
internal static class BitmapCommand
{
    public const string Usage = "qcow2 bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f qcow2] FILE BITMAP";

    private static readonly string[] Actions = ["--add", "--remove", "--clear", "--enable", "--disable", "--merge"];

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-b", "--source-file", "-F", "--source-format", "-f", "-g", "--granularity", "--merge"], ["--add", "--remove", "--clear", "--enable", "--disable"], ImageArguments.First);
        var actions = line.Ordered.Where(o => Actions.Contains(o.Name)).ToList();
        var granularity = line.Value("-g", "--granularity") is { } granularityText ? Sizes.Cvtnum("granularity", granularityText) : 0;

        var sourceFile = line.Value("-b", "--source-file");
        var problem = actions.Count == 0 ? "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"
            : granularity != 0 && !line.Has("--add") ? "granularity only supported with --add"
            : line.Value("-F", "--source-format") is not null && sourceFile is null ? "-F only supported with -b"
            : sourceFile is not null && !line.Has("--merge") ? "Merge bitmap source file only supported with --merge"
            : line.Positionals.Count != 2 ? "Expecting filename and bitmap name"
            : null;
        if (problem is not null)
        {
            throw new QemuArgumentError(problem);
        }

        var (path, name) = (line.Positionals[0], line.Positionals[1]);
        FileArguments.CheckInput(path);
        var format = line.Value("-f") ?? DiskSource.ProbeFormat(path);
        if (format != "qcow2")
        {
            // No other format stores bitmaps: qemu-img finds none to change, and cannot add one.
            var first = actions[0].Name[2..];
            throw new QemuArgumentError($"Operation {first} on bitmap {name} failed: " + (first == "add" ? $"Can't store persistent bitmaps to {path}: Operation not supported" : $"Dirty bitmap '{name}' not found"));
        }

        using var image = FileArguments.OpenImage(path, ImageOptions.For(line, path, writable: true) with { BackingFiles = BackingFileMode.Ignore });
        using var source = sourceFile is null ? null : FileArguments.OpenImage(sourceFile, ImageOptions.For(line, sourceFile) with { BackingFiles = BackingFileMode.Ignore });
        foreach (var (action, value) in actions)
        {
            try
            {
                Apply(image, action, name, value, granularity, source);
            }
            catch (BitmapException error)
            {
                throw new QemuArgumentError($"Operation {action[2..]} on bitmap {name} failed: {error.Message}");
            }
        }

        return 0;
    }

    private static void Apply(Qcow2Image image, string action, string name, string? value, long granularity, Qcow2Image? source)
    {
        switch (action)
        {
            case "--add":
                // qemu-img hands QMP a 32-bit granularity: anything from 4 GiB up is refused as invalid.
                image.AddBitmap(name, granularity == 0 ? null : granularity);
                break;
            case "--remove":
                image.RemoveBitmap(name);
                break;
            case "--clear":
                image.ClearBitmap(name);
                break;
            case "--enable":
                image.EnableBitmap(name);
                break;
            case "--disable":
                image.DisableBitmap(name);
                break;
            default:
                image.MergeBitmap(name, value!, source);
                break;
        }
    }
}
