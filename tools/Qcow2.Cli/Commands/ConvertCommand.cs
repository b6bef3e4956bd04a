using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.DiscUtils;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 convert [-f FMT] -O raw|qcow2 [-c] [-o OPTIONS] [-p] SRC DST</summary>
internal static class ConvertCommand
{
    public const string Usage = "qcow2 convert [-f FMT] [-O qcow2|raw|vmdk|vhdx|vpc|vdi] [-c] [-o OPTIONS] [--bitmaps [--skip-broken-bitmaps]] [-p] [-q] SRC DST";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-O", "-o"], ["-p", "-c", "-q", "--bitmaps", "--skip-broken-bitmaps", .. ImageOptions.ForceShareFlags]);
        if (CreateOptionParser.AsksForHelp(line.Values("-o")) && (line.Value("-O") ?? "raw") == "qcow2")
        {
            Console.Out.Write(CreateOptionParser.HelpTable(withFileName: line.Positionals.Count > 1)); // qemu-img prints it and exits 0, file names or not
            return 0;
        }

        line.ExpectPositionals(2, 2, Usage);
        var target = line.Value("-O") ?? "raw";
        var bitmaps = line.Has("--bitmaps");
        if (line.Has("--skip-broken-bitmaps") && !bitmaps)
        {
            return Fail("Use of --skip-broken-bitmaps requires --bitmaps");
        }

        using var source = Disks.Open(line.Positionals[0], line.Value("-f"), ImageOptions.For(line, line.Positionals[0]));
        if (bitmaps && BitmapCopy.Refusal(source, line.Has("--skip-broken-bitmaps")) is { } refusal)
        {
            return Fail(refusal);
        }

        FileArguments.CheckOutput(line.Positionals[1]);
        ImageCopier.ThrowIfSourceFile(source, line.Positionals[1]);
        if (bitmaps && target != "qcow2")
        {
            // qemu-img creates the target before it finds the format cannot hold bitmaps, and leaves it.
            FileStorage.Create(line.Positionals[1]).Dispose();
            return Fail($"Format driver '{target}' does not support bitmaps");
        }

        var progress = new Progress(line.Has("-p") && !line.Has("-q"));
        switch (target)
        {
            case "raw":
                if (line.Has("-c") || line.Values("-o").Count > 0)
                {
                    throw new UsageException("-c and -o apply to -O qcow2 only");
                }

                ToRaw(source, line.Positionals[1], progress);
                break;
            case "qcow2":
                var parser = new CreateOptionParser(line.Values("-o"), Extensions.CreateOptionKeys);
                var options = parser.Build(source.Size, backingFile: null, backingFormat: null);
                if (options.DataFile is { } dataFile && source.UsesFile(DefaultBackingFileResolver.ResolvePath(dataFile, FilePaths.Absolute(line.Positionals[1]))))
                {
                    // Creating the data file empties it; with -U no lock of the source's would stop that.
                    throw new IOException($"Could not create the data file '{dataFile}': it is the source image or a file the source reads (its backing or data file)");
                }

                using (var image = Extensions.Create(line.Positionals[1], options with { Size = source.Size }, parser))
                {
                    if (bitmaps && image.Info.Version < 3)
                    {
                        return Fail("Format driver 'qcow2' does not support bitmaps");
                    }

                    ImageCopier.Copy(source, image, new ImageCopyOptions { Compress = line.Has("-c"), Progress = progress });
                    if (bitmaps && BitmapCopy.Copy(source.Image!, image) is { } failure)
                    {
                        return Fail(failure);
                    }

                    if (!line.Has("-q") && image.GetExtension<DedupExtension>() is { State: DedupIndexState.Active })
                    {
                        progress.Finish();
                        Console.Out.WriteLine(DedupCommand.Summary(image.GetDedupStatistics()));
                    }
                }

                break;
            case var foreign when ForeignDisks.IsForeign(foreign):
                if (line.Has("-c"))
                {
                    throw new UsageException($"-c is not supported for output format {foreign} (compress into qcow2)");
                }

                ToForeign(source, line.Positionals[1], foreign, KeyValues(line.Values("-o")), progress);
                break;
            default:
                throw new UsageException($"output format '{target}' is not supported; use {Disks.FormatList}");
        }

        progress.Finish();
        return 0;
    }

    private static int Fail(string message)
    {
        Console.Error.WriteLine($"qcow2: {message}");
        return 1;
    }

    /// <summary>Copies every non-zero byte of the source into a new vmdk/vhdx/vpc/vdi disk (through DiscUtils).</summary>
    private static void ToForeign(DiskSource source, string destination, string format, Dictionary<string, string> options, Progress progress)
    {
        IStorage output;
        try
        {
            Disks.KeepMarshallingData();
            output = ForeignDisks.Create(destination, format, source.Size, options);
        }
        catch (ArgumentException error)
        {
            throw new UsageException(error.Message);
        }

        using (output)
        {
            ImageCopier.CopyToRaw(source, output, new ImageCopyOptions { Progress = progress });
        }
    }

    /// <summary>-o key=value[,key=value…] (repeatable), for the formats whose options are not qcow2's.</summary>
    private static Dictionary<string, string> KeyValues(IEnumerable<string> values)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var item in values.SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries)))
        {
            var split = item.IndexOf('=', StringComparison.Ordinal);
            if (split <= 0)
            {
                throw new UsageException($"invalid option '{item}' (expected key=value)");
            }

            options[item[..split]] = item[(split + 1)..];
        }

        return options;
    }

    /// <summary>Copies every non-zero byte of the source into a sparse raw file.</summary>
    private static void ToRaw(DiskSource source, string destination, Progress progress)
    {
        using var output = FileStorage.Create(destination);
        ImageCopier.CopyToRaw(source, output, new ImageCopyOptions { Progress = progress });
    }
}
