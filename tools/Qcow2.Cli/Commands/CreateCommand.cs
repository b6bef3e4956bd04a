using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 create [-f qcow2] [-o OPTIONS] [-b BACKING [-F FMT]] [-u] [-q] FILE [SIZE]</summary>
internal static class CreateCommand
{
    public const string Usage = "qcow2 create [-f qcow2] [-o OPTIONS] [-b BACKING [-F FMT]] [-u] [-q] FILE [SIZE]";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-o", "-b", "-F"], ["-u", "-q"]);
        line.ExpectPositionals(1, 2, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 images can be created, not '{format}'");
        }

        var path = line.Positionals[0];
        long? size = line.Positionals.Count > 1 ? Sizes.ParseImageSize(line.Positionals[1]) : null;
        var parser = new CreateOptionParser(line.Values("-o"), Extensions.CreateOptionKeys);
        var options = parser.Build(size, line.Value("-b"), line.Value("-F"));
        if (options.Size is null && options.BackingFile is null)
        {
            throw new UsageException("an image size is needed without a backing file");
        }

        // qemu-img rounds a size up to whole 512-byte sectors (qcow2_co_create_opts) and reports it as given.
        var requested = options.Size;
        if (requested is > 0 and var given && given % 512 != 0)
        {
            options = options with { Size = (given + 511) / 512 * 512 };
        }

        FileArguments.CheckOutput(path);
        options = options with { OpenOptions = new Qcow2OpenOptions { BackingPolicy = ImageOptions.Policy(line.Value(ImageOptions.BackingPolicyOption), path) } };
        using var image = Extensions.Create(path, options, parser);
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine(CreateOptionParser.Describe(path, options, requested ?? image.Size, parser.Has("compat")));
        }

        return 0;
    }
}
