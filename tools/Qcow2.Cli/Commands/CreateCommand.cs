using QcowDedup.Qcow2.DiscUtils;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 create [-f FMT] [-o OPTIONS] [-b BACKING -F FMT] [-u] [-q] FILE [SIZE]</summary>
internal static class CreateCommand
{
    public const string Usage = "qcow2 create [-f qcow2|raw|vmdk|vhdx|vpc|vdi] [-o OPTIONS] [-b BACKING -F FMT] [-u] [-q] FILE [SIZE]";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-o", "-b", "-F"], ["-u", "-q"], ImageArguments.ObjectsOnly);
        if (CreateOptionParser.AsksForHelp(line.Values("-o")))
        {
            Console.Out.Write(CreateOptionParser.HelpTable(withFileName: line.Positionals.Count > 0)); // qemu-img prints it and exits 0, file names or not
            return 0;
        }

        line.ExpectPositionals(1, 2, Usage);
        var path = line.Positionals[0];
        long? size = line.Positionals.Count > 1 ? Sizes.ParseImageSize(line.Positionals[1]) : null;
        switch (line.Value("-f") ?? "qcow2")
        {
            case "qcow2":
                break;
            case "raw":
                return CreateRaw(line, path, size);
            case var foreign when ForeignDisks.IsForeign(foreign):
                return CreateForeign(line, path, foreign, size);
            case var format:
                throw new QemuArgumentError($"{path}: Unknown file format '{format}'");
        }

        CreateOptionParser parser;
        try
        {
            parser = new CreateOptionParser(line.Values("-o"), Extensions.CreateOptionKeys);
        }
        catch (UsageException error)
        {
            throw new QemuArgumentError($"{path}: {error.Message}");
        }

        if (Qcow2OptionValues.SyntaxProblem(key => parser[key]) is { } syntax)
        {
            throw new QemuArgumentError($"{path}: {syntax}");
        }

        if (parser["size"] is not null && size is not null)
        {
            throw new QemuArgumentError($"{path}: The image size must be specified only once");
        }

        var backingFile = line.Value("-b") ?? parser["backing_file"];
        var backingFormat = line.Value("-F") ?? parser["backing_fmt"];
        long? requested = parser["size"] is { } sizeText ? Sizes.ParseParameter("size", sizeText) : size;
        if (requested is null && (backingFile is null || line.Has("-u")))
        {
            throw new QemuArgumentError($"{path}: Image creation needs a size parameter");
        }

        if (backingFile is { } backing && backingFormat is null)
        {
            // qemu-img 7.2 refuses to guess: a probed format is how a raw backing file gets read as something else.
            var detected = line.Has("-u") ? null : DefaultBackingFileResolver.TryResolvePath(backing, FilePaths.Absolute(path)) is { } resolved && File.Exists(resolved)
                ? DiskSource.ProbeFormat(resolved)
                : null;
            var hint = detected is null ? "name it with -F" : $"detected format of {backing}: {detected}; name it with -F {detected}";
            throw new IOException($"{path}: Backing file specified without backing format ({hint})");
        }

        if (backingFile is { } named && !line.Has("-u"))
        {
            var resolved = DefaultBackingFileResolver.TryResolvePath(named, FilePaths.Absolute(path));
            if (resolved is null || !File.Exists(resolved))
            {
                throw new QemuArgumentError($"{path}: Could not open '{named}': No such file or directory\nCould not open backing image.");
            }
        }

        // qemu-img prints the line before the driver checks the values, so a refused value follows it.
        var formatting = requested is { } known ? parser.Describe(path, known, line.Value("-b"), line.Value("-F")) : null;
        if (Qcow2OptionValues.CreateProblem(key => parser[key], backingFile is not null, backingFormat is not null) is { } problem)
        {
            if (!line.Has("-q") && formatting is not null)
            {
                Console.Out.WriteLine(formatting);
            }

            throw new QemuArgumentError($"{path}: {problem}");
        }

        var options = parser.Build(size, line.Value("-b"), line.Value("-F"));

        // qemu-img rounds a size up to whole 512-byte sectors (qcow2_co_create_opts) and reports it as given.
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
            Console.Out.WriteLine(formatting ?? parser.Describe(path, image.Size, line.Value("-b"), line.Value("-F")));
        }

        return 0;
    }

    /// <summary>-f vmdk|vhdx|vpc|vdi: an empty disk through DiscUtils, announced with qemu-img's line for the format.</summary>
    private static int CreateForeign(CommandLine line, string path, string format, long? size)
    {
        var options = ConvertCommand.KeyValues(line.Values("-o"));
        size = options.Remove("size", out var sizeText) ? Sizes.ParseParameter("size", sizeText) : size;
        if (size is not { } bytes)
        {
            throw new QemuArgumentError($"{path}: Image creation needs a size parameter");
        }

        var given = (string key) => options.TryGetValue(key, out var value) ? $" {key}={value}" : string.Empty;
        var description = format switch
        {
            "vmdk" => $"size={bytes} compat6=off hwversion=undefined{given("subformat")}",
            "vhdx" => $"size={bytes} log_size=1048576 block_size=0{given("subformat")}",
            "vdi" => $"size={bytes} static={(options.GetValueOrDefault("static") is "on" ? "on" : "off")}",
            _ => $"size={bytes}{given("subformat")}",
        };
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine($"Formatting '{path}', fmt={format} {description}");
        }

        FileArguments.CheckOutput(path);
        Disks.KeepMarshallingData();
        try
        {
            ForeignDisks.Create(path, format, bytes, options).Dispose();
        }
        catch (ArgumentException error)
        {
            throw new QemuArgumentError($"{path}: {error.Message}");
        }

        return 0;
    }

    /// <summary>-f raw: a file of SIZE bytes, sparse (preallocation=off), reserved (falloc) or written with zeros (full).</summary>
    private static int CreateRaw(CommandLine line, string path, long? size)
    {
        var values = line.Values("-o").SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries))
            .Select(pair => pair.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "on", StringComparer.Ordinal);
        if (values.Keys.FirstOrDefault(k => k is not ("size" or "preallocation")) is { } unknown)
        {
            throw new QemuArgumentError($"{path}: Invalid parameter '{unknown}'");
        }

        size = values.TryGetValue("size", out var sizeText) ? Sizes.ParseParameter("size", sizeText) : size;
        if (size is not { } bytes)
        {
            throw new QemuArgumentError($"{path}: Image creation needs a size parameter");
        }

        var preallocation = values.GetValueOrDefault("preallocation");
        var description = $"Formatting '{path}', fmt=raw size={bytes}" + (preallocation is null ? string.Empty : $" preallocation={preallocation}");
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine(description);
        }

        FileArguments.CheckOutput(path);
        if (preallocation is not (null or "off" or "falloc" or "full"))
        {
            if (preallocation == "metadata")
            {
                File.Create(path).Dispose(); // qemu-img has created the file when the raw driver refuses the mode
            }

            throw new QemuArgumentError(preallocation == "metadata" ? $"{path}: Unsupported preallocation mode: metadata" : $"{path}: Parameter 'preallocation' does not accept value '{preallocation}'");
        }

        using var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.Create,
            Access = FileAccess.Write,
            PreallocationSize = preallocation is "falloc" or "full" ? bytes : 0, // fallocate: the blocks are reserved
        });
        file.SetLength(bytes);
        if (preallocation == "full")
        {
            var zeros = new byte[1 << 20];
            for (var done = 0L; done < bytes; done += zeros.Length)
            {
                file.Write(zeros, 0, (int)Math.Min(zeros.Length, bytes - done));
            }
        }

        return 0;
    }
}
