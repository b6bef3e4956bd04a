namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 resize [--shrink] [-f qcow2] [-q] FILE [+|-]SIZE</summary>
internal static class ResizeCommand
{
    public const string Usage = "qcow2 resize [--shrink] [-f qcow2] [-q] FILE [+|-]SIZE";

    public static int Run(IReadOnlyList<string> args)
    {
        // "-512k" is a size, not an option: take the last argument before option parsing.
        if (args.Count < 2)
        {
            throw new UsageException($"missing arguments; usage: {Usage}");
        }

        var sizeText = args[^1];
        var line = CommandLine.Parse(args.Take(args.Count - 1).ToList(), ["-f"], ["--shrink", "-q"]);
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 images can be resized, not '{format}'");
        }

        // Like qemu-img, the size is read before the image is opened.
        var sign = sizeText.StartsWith('+') ? 1 : sizeText.StartsWith('-') ? -1 : 0;
        var amount = Sizes.ParseParameter("size", sign == 0 ? sizeText : sizeText[1..]);
        using var image = FileArguments.OpenImage(line.Positionals[0], ImageOptions.For(line, line.Positionals[0], writable: true));
        var newSize = sign switch
        {
            0 => amount,
            > 0 when amount > long.MaxValue - image.Size => throw new UsageException($"Value '{sizeText}' is out of range for parameter 'size'"),
            _ => image.Size + (sign * amount),
        };
        if (newSize <= 0)
        {
            throw new UsageException("New image size must be positive");
        }

        if (newSize < image.Size && !line.Has("--shrink"))
        {
            Console.Error.WriteLine("qcow2: Use the --shrink option to perform a shrink operation.");
            Console.Error.WriteLine("qcow2: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
            return 1;
        }

        image.Resize(newSize, allowShrink: true);
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine("Image resized.");
        }

        return 0;
    }
}
