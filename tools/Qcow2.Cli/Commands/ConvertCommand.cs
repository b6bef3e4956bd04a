using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.DiscUtils;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 convert [-f FMT] -O raw|qcow2 [-c] [-o OPTIONS] [-p] SRC DST</summary>
internal static class ConvertCommand
{
    public const string Usage = "qcow2 convert [-f FMT] [-O qcow2|raw|vmdk|vhdx|vpc|vdi] [-c] [-o OPTIONS] [-B BACKING [-F BACKING_FMT]] [-l SNAPSHOT] [-n [--target-is-zero]] [-S SPARSE] [-m N] [-W] [-C] [-r RATE] [-t CACHE] [-T SRC_CACHE] [--salvage] [--bitmaps [--skip-broken-bitmaps]] [-p] [-q] SRC [SRC...] DST";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-O", "-o", "-B", "-F", "-l", "-S", "-m", "-r", "-t", "-T"],
            ["-p", "-c", "-q", "-n", "-W", "-C", "--target-is-zero", "--salvage", "--bitmaps", "--skip-broken-bitmaps", .. ImageOptions.ForceShareFlags], ImageArguments.SourcesAndTarget);
        if (CreateOptionParser.AsksForHelp(line.Values("-o")) && (line.Value("-O") ?? "raw") == "qcow2")
        {
            Console.Out.Write(CreateOptionParser.HelpTable(withFileName: line.Positionals.Count > 1)); // qemu-img prints it and exits 0, file names or not
            return 0;
        }

        var copy = ParseCopyOptions(line);
        if (Refusal(line) is { } refused)
        {
            throw new QemuArgumentError(refused);
        }

        line.ExpectPositionals(2, int.MaxValue, Usage);
        var target = line.Value("-O") ?? "raw";
        var bitmaps = line.Has("--bitmaps");
        var destination = line.Positionals[^1];
        var sources = new List<DiskSource>();
        var owners = new List<IDisposable>();
        try
        {
            foreach (var path in line.Positionals.SkipLast(1))
            {
                sources.Add(OpenSource(line, path, owners));
            }

            if (bitmaps && sources.Count > 1)
            {
                throw new QemuArgumentError("Cannot copy bitmaps from multiple sources");
            }

            if (bitmaps && BitmapCopy.Refusal(sources[0], line.Has("--skip-broken-bitmaps")) is { } refusal)
            {
                throw new QemuArgumentError(refusal);
            }

            foreach (var source in sources)
            {
                ImageCopier.ThrowIfSourceFile(source, destination);
            }

            var progress = new Progress(line.Has("-p") && !line.Has("-q"));
            var result = line.Has("-n") ? IntoExisting(line, sources, destination, target, copy, progress) : IntoNew(line, sources, destination, target, copy, progress);
            progress.Finish(); // a refusal throws before this: no 100% after an error
            return result;
        }
        finally
        {
            sources.ForEach(s => s.Dispose());
            owners.ForEach(o => o.Dispose());
        }
    }

    /// <summary>The copy options qemu-img reads from -S, -r, -m and the cache modes, refused in its words.</summary>
    private static ImageCopyOptions ParseCopyOptions(CommandLine line)
    {
        long? sparse = null;
        if (line.Value("-S") is { } sparseText)
        {
            sparse = Sizes.Cvtnum("buffer size for sparse output", sparseText);
            if (sparse % 512 != 0 || sparse > 16 << 20)
            {
                throw new QemuArgumentError("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).");
            }
        }

        if (line.Value("-m") is { } coroutines && (!int.TryParse(coroutines, out var count) || count is < 1 or > 16))
        {
            throw new QemuArgumentError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
        }

        var rate = line.Value("-r") is { } rateText ? Sizes.Cvtnum("rate limit", rateText) : (long?)null;
        ImageOptions.CheckCacheModes(line);
        var salvage = line.Has("--salvage") ? new SalvageWarnings(line.Has("-q")) : null;

        return new ImageCopyOptions
        {
            Compress = line.Has("-c"),
            SparseSize = sparse,
            RateLimit = rate is 0 ? null : rate,
            TargetHasData = line.Has("-n") && !line.Has("--target-is-zero"),
            OnReadError = salvage is null ? null : salvage.Read,
            OnStatusError = salvage is null ? null : salvage.Status,
        };
    }

    /// <summary>
    /// What qemu-img convert --salvage prints: the image's first corruption once (as QEMU's qcow2
    /// driver reports it, -q or not), then a warning per 512-byte sector whose status or data
    /// could not be read, with the errno QEMU gives a corrupt table (EIO).
    /// </summary>
    private sealed class SalvageWarnings(bool quiet)
    {
        private int _corruptionShown;

        public void Status(long offset, Exception error) => Warn($"error while reading block status at offset {offset}", error);

        public void Read(long offset, Exception error) => Warn($"error while reading offset {offset}", error);

        private void Warn(string what, Exception error)
        {
            var corruption = error is InvalidDataException;
            if (corruption && Interlocked.Exchange(ref _corruptionShown, 1) == 0)
            {
                Console.Error.WriteLine($"qcow2: Image is corrupt: {error.Message}; further non-fatal corruption events will be suppressed");
            }

            if (!quiet)
            {
                Console.Error.WriteLine($"qcow2: warning: {what}: {(corruption ? "Input/output error" : error.Message)}");
            }
        }
    }

    /// <summary>qemu-img's refusals of option combinations, before any file is opened.</summary>
    private static string? Refusal(CommandLine line)
    {
        var target = line.Value("-O") ?? "raw";
        return line.Has("--skip-broken-bitmaps") && !line.Has("--bitmaps") ? "Use of --skip-broken-bitmaps requires --bitmaps"
            : line.Has("--target-is-zero") && !line.Has("-n") ? "--target-is-zero requires use of -n flag"
            : line.Has("-n") && line.Values("-o").Count > 0 ? "-o has no effect when skipping image creation"
            : line.Has("-C") && line.Has("-c") ? "Cannot enable copy offloading when -c is used"
            : line.Has("-c") && target != "qcow2" ? "Compression not supported for this file format"
            : line.Value("-B") is not null && target != "qcow2" ? $"Backing file not supported for file format '{target}'"
            : line.Value("-B") is not null && line.Value("-F") is null ? "Use of backing file requires explicit backing format"
            : null;
    }

    /// <summary>A source, or with -l the internal snapshot of it (snapshot.id=…, snapshot.name=…, or an id else a name).</summary>
    internal static DiskSource OpenSource(CommandLine line, string path, List<IDisposable> owners)
    {
        var source = Disks.Open(path, line.Value("-f"), ImageOptions.For(line, path));
        if (line.Value("-l") is not { } snapshot)
        {
            return source;
        }

        using (source)
        {
            var image = source.Image ?? throw new IOException("Failed to load snapshot: Operation not supported");
            var (key, lookup) = snapshot.StartsWith("snapshot.id=", StringComparison.Ordinal) ? (snapshot["snapshot.id=".Length..], SnapshotLookup.Id)
                : snapshot.StartsWith("snapshot.name=", StringComparison.Ordinal) ? (snapshot["snapshot.name=".Length..], SnapshotLookup.Name)
                : (snapshot, SnapshotLookup.IdThenName);
            if (image.FindSnapshot(key, lookup) is null)
            {
                throw new IOException($"Failed to load snapshot: Can't find snapshot");
            }

            // The snapshot view shares the image's files: the image stays open until the copy is done.
            var reopened = Qcow2Image.Open(path, ImageOptions.For(line, path));
            owners.Add(reopened);
            return DiskSource.FromImage(reopened.OpenSnapshot(key, lookup), leaveOpen: false);
        }
    }

    private static int IntoNew(CommandLine line, List<DiskSource> sources, string destination, string target, ImageCopyOptions copy, Progress progress)
    {
        FileArguments.CheckOutput(destination);
        var total = sources.Sum(s => s.Size);
        var bitmaps = line.Has("--bitmaps");
        if (bitmaps && target != "qcow2")
        {
            // qemu-img creates the target before it finds the format cannot hold bitmaps, and leaves it.
            FileStorage.Create(destination).Dispose();
            throw new QemuArgumentError($"Format driver '{target}' does not support bitmaps");
        }

        switch (target)
        {
            case "raw":
                using (var output = FileStorage.Create(destination))
                {
                    CopyAll(sources, copy with { Progress = progress }, (source, options) => ImageCopier.CopyToRaw(source, output, options));
                }

                return 0;
            case "qcow2":
                CreateOptionParser parser;
                try
                {
                    parser = new CreateOptionParser(line.Values("-o"), Extensions.CreateOptionKeys);
                }
                catch (UsageException error)
                {
                    throw new QemuArgumentError(error.Message); // an unknown key, as qemu-img reports it
                }

                if (Qcow2OptionValues.SyntaxProblem(key => parser[key]) is { } syntax)
                {
                    throw new QemuArgumentError(syntax);
                }

                if (Qcow2OptionValues.CreateProblem(key => parser[key], line.Value("-B") is not null, line.Value("-B") is not null && line.Value("-F") is not null) is { } problem)
                {
                    throw new QemuArgumentError($"{destination}: error while converting qcow2: {problem}");
                }

                var options = parser.Build(total, backingFile: line.Value("-B"), backingFormat: line.Value("-B") is null ? null : line.Value("-F"));
                if (options.DataFile is { } dataFile && sources.Any(s => s.UsesFile(DefaultBackingFileResolver.ResolvePath(dataFile, FilePaths.Absolute(destination)))))
                {
                    // Creating the data file empties it; with -U no lock of the source's would stop that.
                    throw new IOException($"Could not create the data file '{dataFile}': it is the source image or a file the source reads (its backing or data file)");
                }

                using (var image = Extensions.Create(destination, options with { Size = total }, parser))
                {
                    if (bitmaps && image.Info.Version < 3)
                    {
                        throw new QemuArgumentError("Format driver 'qcow2' does not support bitmaps");
                    }

                    CopyAll(sources, copy with { Progress = progress }, (source, o) => ImageCopier.Copy(source, image, o));
                    if (bitmaps && BitmapCopy.Copy(sources[0].Image!, image) is { } failure)
                    {
                        throw new QemuArgumentError(failure);
                    }

                    if (!line.Has("-q") && image.GetExtension<DedupExtension>() is { State: DedupIndexState.Active })
                    {
                        progress.Finish();
                        Console.Out.WriteLine(DedupCommand.Summary(image.GetDedupStatistics()));
                    }
                }

                return 0;
            case var foreign when ForeignDisks.IsForeign(foreign):
                if (sources.Count > 1)
                {
                    throw new UsageException($"several sources are not supported for output format {foreign}");
                }

                ToForeign(sources[0], destination, foreign, KeyValues(line.Values("-o")), progress);
                return 0;
            default:
                throw new QemuArgumentError($"Unknown file format '{target}'");
        }
    }

    /// <summary>-n: the target exists and keeps its size; it gets the sources' contents, zeros included unless --target-is-zero.</summary>
    private static int IntoExisting(CommandLine line, List<DiskSource> sources, string destination, string target, ImageCopyOptions copy, Progress progress)
    {
        FileArguments.CheckInput(destination);
        var total = sources.Sum(s => s.Size);
        copy = copy with { Progress = progress };
        if (target == "qcow2")
        {
            using var image = FileArguments.OpenImage(destination, ImageOptions.For(line, destination, writable: true));
            if (image.Size < total)
            {
                throw new QemuArgumentError("output file is smaller than input file");
            }

            if (line.Has("--bitmaps") && image.Info.Version < 3)
            {
                throw new QemuArgumentError("Format driver 'qcow2' does not support bitmaps");
            }

            CopyAll(sources, copy, (source, o) => ImageCopier.Copy(source, image, o));
            return line.Has("--bitmaps") && BitmapCopy.Copy(sources[0].Image!, image) is { } failure ? throw new QemuArgumentError(failure) : 0;
        }

        if (target != "raw")
        {
            throw new UsageException($"-n is supported for qcow2 and raw targets, not '{target}'");
        }

        ImageOpts.CheckWritable(destination);
        using var file = FileStorage.Open(destination, writable: true);
        if (file.Length < total)
        {
            throw new QemuArgumentError("output file is smaller than input file");
        }

        if (line.Has("--bitmaps"))
        {
            throw new QemuArgumentError("Format driver 'raw' does not support bitmaps");
        }

        CopyAll(sources, copy, (source, o) => ImageCopier.CopyToRaw(source, file, o));
        return 0;
    }

    /// <summary>Each source in turn, placed after the one before (qemu-img convert of several sources concatenates them).</summary>
    private static void CopyAll(List<DiskSource> sources, ImageCopyOptions options, Action<DiskSource, ImageCopyOptions> copy)
    {
        var offset = 0L;
        foreach (var source in sources)
        {
            copy(source, options with { TargetOffset = offset, Progress = sources.Count == 1 ? options.Progress : null });
            offset += source.Size;
        }
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
    internal static Dictionary<string, string> KeyValues(IEnumerable<string> values)
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
}
