using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 create [-f qcow2] [-o OPTIONS] [-b BACKING -F FMT] [-u] [-q] FILE [SIZE]</summary>
internal static class CreateCommand
{
    public const string Usage = "qcow2 create [-f qcow2] [-o OPTIONS] [-b BACKING -F FMT] [-u] [-q] FILE [SIZE]";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-o", "-b", "-F"], ["-u", "-q"]);
        if (CreateOptionParser.AsksForHelp(line.Values("-o")))
        {
            Console.Out.Write(CreateOptionParser.HelpTable(withFileName: line.Positionals.Count > 0)); // qemu-img prints it and exits 0, file names or not
            return 0;
        }

        line.ExpectPositionals(1, 2, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 images can be created, not '{format}'");
        }

        var path = line.Positionals[0];
        long? size = line.Positionals.Count > 1 ? Sizes.ParseImageSize(line.Positionals[1]) : null;
        var parser = new CreateOptionParser(line.Values("-o"), Extensions.CreateOptionKeys);
        var options = parser.Build(size, line.Value("-b"), line.Value("-F"));
        if (options.Size is null && (options.BackingFile is null || line.Has("-u")))
        {
            throw options.BackingFile is null
                ? new UsageException("an image size is needed without a backing file")
                : new IOException($"{path}: Image creation needs a size parameter (with -u the backing file is not opened to take its size)");
        }

        if (options.BackingFile is { } backing && options.BackingFormat is null)
        {
            // qemu-img 7.2 refuses to guess: a probed format is how a raw backing file gets read as something else.
            var detected = line.Has("-u") ? null : DefaultBackingFileResolver.TryResolvePath(backing, FilePaths.Absolute(path)) is { } resolved && File.Exists(resolved)
                ? DiskSource.ProbeFormat(resolved)
                : null;
            var hint = detected is null ? "name it with -F" : $"detected format of {backing}: {detected}; name it with -F {detected}";
            throw new IOException($"{path}: Backing file specified without backing format ({hint})");
        }

        // qemu-img rounds a size up to whole 512-byte sectors (qcow2_co_create_opts) and reports it as given.
        var requested = options.Size;
        if (requested is > 0 and var given && given % 512 != 0)
        {
            options = options with { Size = (given + 511) / 512 * 512 };
        }

        FileArguments.CheckOutput(path);
        options = options with
        {
            OpenOptions = new Qcow2OpenOptions
            {
                BackingPolicy = ImageOptions.Policy(line.Value(ImageOptions.BackingPolicyOption), path),
                BackingFiles = line.Has("-u") ? BackingFileMode.Ignore : BackingFileMode.Open, // -u: the backing file need not exist yet
            },
        };
        using var image = Extensions.Create(path, options, parser);
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine(CreateOptionParser.Describe(path, options, requested ?? image.Size, parser.Has("compat")));
        }

        return 0;
    }
}
