using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 resize [--shrink] [-f qcow2] [-q] FILE [+|-]SIZE</summary>
internal static class ResizeCommand
{
    public const string Usage = "qcow2 resize [--shrink] [--preallocation=off|metadata|falloc|full] [-f qcow2|raw] [-q] FILE [+|-]SIZE";

    public static int Run(IReadOnlyList<string> args)
    {
        // "-512k" is a size, not an option: take the last argument before option parsing.
        if (args.Count < 2)
        {
            throw new UsageException($"missing arguments; usage: {Usage}");
        }

        var sizeText = args[^1];
        var line = CommandLine.Parse(args.Take(args.Count - 1).ToList(), ["-f", "--preallocation"], ["--shrink", "-q"], ImageArguments.First);
        line.ExpectPositionals(1, 1, Usage);
        var preallocation = line.Value("--preallocation") switch
        {
            null or "off" => Preallocation.Off,
            "metadata" => Preallocation.Metadata,
            "falloc" => Preallocation.Falloc,
            "full" => Preallocation.Full,
            var other => throw new QemuArgumentError($"Invalid preallocation mode '{other}'"),
        };

        // Like qemu-img, the size is read before the image is opened.
        var sign = sizeText.StartsWith('+') ? 1 : sizeText.StartsWith('-') ? -1 : 0;
        var amount = Sizes.ParseParameter("size", sign == 0 ? sizeText : sizeText[1..]);
        var path = line.Positionals[0];
        FileArguments.CheckInput(path);
        var format = line.Value("-f") ?? DiskSource.ProbeFormat(path);
        if (format == "raw")
        {
            if (line.Value("-f") is null)
            {
                ImageOptions.WarnProbedRaw(path);
            }

            return ResizeRaw(line, path, sign, amount, sizeText, preallocation);
        }

        if (format != "qcow2")
        {
            throw new UsageException($"only qcow2 and raw images can be resized, not '{format}'");
        }

        using var image = FileArguments.OpenImage(path, ImageOptions.For(line, path, writable: true));
        var newSize = NewSize(image.Size, sign, amount, sizeText);
        if (preallocation != Preallocation.Off && newSize < image.Size)
        {
            throw new QemuArgumentError("Preallocation can only be used for growing images");
        }

        if (newSize < image.Size && !line.Has("--shrink"))
        {
            return RefuseShrink();
        }

        if (preallocation == Preallocation.Off)
        {
            image.Resize(newSize, allowShrink: true);
        }
        else
        {
            image.Resize(newSize, preallocation);
        }

        return Resized(line);
    }

    /// <summary>A raw file: its length changes; the new part is a hole, reserved (falloc) or written with zeros (full).</summary>
    private static int ResizeRaw(CommandLine line, string path, int sign, long amount, string sizeText, Preallocation preallocation)
    {
        ImageOpts.CheckWritable(path);
        using var file = FileStorage.Open(path, writable: true);
        var oldSize = file.Length;
        var newSize = NewSize(oldSize, sign, amount, sizeText);
        if (preallocation != Preallocation.Off && newSize < oldSize)
        {
            throw new QemuArgumentError("Preallocation can only be used for growing images");
        }

        if (newSize < oldSize && !line.Has("--shrink"))
        {
            return RefuseShrink();
        }

        if (preallocation == Preallocation.Metadata)
        {
            throw new QemuArgumentError("Unsupported preallocation mode: metadata");
        }

        file.SetLength(newSize);
        if (preallocation == Preallocation.Falloc)
        {
            file.Reserve(oldSize, newSize - oldSize);
        }
        else if (preallocation == Preallocation.Full)
        {
            var zeros = new byte[1 << 20];
            for (var done = oldSize; done < newSize; done += zeros.Length)
            {
                file.Write(done, zeros.AsSpan(0, (int)Math.Min(zeros.Length, newSize - done)));
            }
        }

        file.Flush();
        return Resized(line);
    }

    private static long NewSize(long size, int sign, long amount, string sizeText)
    {
        var newSize = sign switch
        {
            0 => amount,
            > 0 when amount > long.MaxValue - size => throw new UsageException($"Value '{sizeText}' is out of range for parameter 'size'"),
            _ => size + (sign * amount),
        };
        return newSize > 0 ? newSize : throw new QemuArgumentError("New image size must be positive");
    }

    private static int RefuseShrink()
    {
        Console.Error.WriteLine("qcow2: Use the --shrink option to perform a shrink operation.");
        Console.Error.WriteLine("qcow2: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
        return 1;
    }

    private static int Resized(CommandLine line)
    {
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine("Image resized.");
        }

        return 0;
    }
}
