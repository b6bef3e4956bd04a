using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 measure [--output human|json] [-f FMT] [-O raw|qcow2] [-o OPTIONS] (--size SIZE | SRC)</summary>
internal static class MeasureCommand
{
    public const string Usage = "qcow2 measure [--output human|json] [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-l SNAPSHOT] [-U] (--size SIZE | SRC)";

    /// <summary>
    /// -o keys qemu-img accepts for each output format: the format's create options plus those of
    /// the file protocol (nocow, extent_size_hint, preallocation).
    /// </summary>
    private static readonly string[] RawKeys = ["size", "preallocation", "nocow", "extent_size_hint"];

    private static readonly string[] Qcow2Keys =
    [
        "size", "compat", "backing_file", "backing_fmt", "data_file", "data_file_raw", "encryption", "encrypt.format",
        "cluster_size", "preallocation", "lazy_refcounts", "refcount_bits", "compression_type", "extended_l2",
        "nocow", "extent_size_hint",
    ];

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-O", "-o", "--size", "--output", "-l"], ["-U", "--force-share"], ImageArguments.First);
        var json = OutputMode.IsJson(line.Value("--output"));
        long? size = line.Value("--size") is { } sizeText ? Sizes.ParseImageSize(sizeText) : null;
        if (line.Positionals.Count > 1)
        {
            throw new UsageException("At most one filename argument is allowed.");
        }

        var sourcePath = line.Positionals.Count == 1 ? line.Positionals[0] : null;
        if (sourcePath is null && size is null)
        {
            throw new UsageException("Either --size N or one filename must be specified.");
        }

        if (sourcePath is null && (line.Value("-f") is not null || line.Has("-l")))
        {
            throw new QemuArgumentError("--image-opts, -f, and -l require a filename argument.");
        }

        if (sourcePath is not null && size is not null)
        {
            throw new UsageException("--size N cannot be used together with a filename.");
        }

        var target = line.Value("-O") ?? "raw"; // qemu-img's default output format
        var options = ParseOptions(line.Values("-o"), target, target switch
        {
            "raw" => RawKeys,
            "qcow2" => Qcow2Keys,
            _ => throw new UsageException($"output format '{target}' cannot be measured; use raw or qcow2"),
        });

        if (Qcow2OptionValues.MeasureSyntaxProblem(key => options.GetValueOrDefault(key), target) is { } syntax)
        {
            throw new QemuArgumentError(syntax);
        }

        var owners = new List<IDisposable>();
        try
        {
            using var source = sourcePath is null ? null : ConvertCommand.OpenSource(line, sourcePath, owners); // -l: an internal snapshot of it
            var measurement = target == "raw" ? MeasureRaw(source, size ?? 0) : MeasureQcow2(source, size, options);
            Console.Out.Write(json ? Json(measurement) : Human(measurement));
        }
        finally
        {
            owners.ForEach(o => o.Dispose());
        }

        return 0;
    }

    /// <summary>A raw file is as long as the disk, whatever is allocated; sizes count whole sectors.</summary>
    private static Qcow2Measurement MeasureRaw(DiskSource? source, long size)
    {
        const long LargestWholeSectors = long.MaxValue / 512 * 512;
        if (size > LargestWholeSectors)
        {
            // qemu-img prints 2^63 here, which no long holds; refuse rather than print a negative size.
            throw new QemuArgumentError($"Invalid image size specified. Must be between 0 and {LargestWholeSectors}.");
        }

        var bytes = source?.Size ?? ((size + 511) / 512 * 512);
        return new Qcow2Measurement(bytes, bytes, null);
    }

    private static Qcow2Measurement MeasureQcow2(DiskSource? source, long? size, Dictionary<string, string> options)
    {
        var create = Qcow2Options(options, size);
        return source switch
        {
            null => Qcow2Image.Measure(create),
            { Image: { } image } => Qcow2Image.Measure(create, image),
            _ => Qcow2Image.Measure(create, source.Size, source.GetMap(0, source.Size)),
        };
    }

    /// <summary>The options qemu-img measure honours for a qcow2 target.</summary>
    private static Qcow2CreateOptions Qcow2Options(Dictionary<string, string> options, long? size)
    {
        if (Qcow2OptionValues.MeasureValueProblem(key => options.GetValueOrDefault(key)) is { } problem)
        {
            throw new QemuArgumentError(problem);
        }

        if (options.ContainsKey("encryption") || options.ContainsKey("encrypt.format"))
        {
            throw new NotSupportedException("Measuring encrypted qcow2 images is not supported.");
        }

        return new Qcow2CreateOptions
        {
            // --size wins over -o size; with a source, -o size is only checked against qcow2's limits.
            Size = size ?? (options.GetValueOrDefault("size") is { } text ? Sizes.ParseParameter("size", text) : null),
            ExtendedL2 = Flag(options, "extended_l2"),
            ClusterSize = options.GetValueOrDefault("cluster_size") is { } cluster ? Qcow2OptionValues.ClusterSize(cluster) : 65536,
            Version = options.GetValueOrDefault("compat") is { } compat ? Qcow2OptionValues.Version(compat) : 3,
            RefcountBits = options.GetValueOrDefault("refcount_bits") is { } bits ? Qcow2OptionValues.RefcountBits(bits) : 16,
            Preallocation = PreallocationMode(options),
            BackingFile = options.GetValueOrDefault("backing_file"),
        };
    }

    private static Preallocation PreallocationMode(Dictionary<string, string> options) =>
        options.GetValueOrDefault("preallocation") is { } mode ? Qcow2OptionValues.Preallocation(mode) : Preallocation.Off;

    /// <summary>Every -o key=value[,key=value] argument merged, later values winning; keys outside <paramref name="known"/> are refused.</summary>
    private static Dictionary<string, string> ParseOptions(IEnumerable<string> optionStrings, string format, string[] known)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in optionStrings.SelectMany(text => text.Split(',', StringSplitOptions.RemoveEmptyEntries)))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var key = equals < 0 ? pair : pair[..equals];
            if (key is "help" or "?")
            {
                throw new UsageException("supported options: " + string.Join(", ", known));
            }

            if (!known.Contains(key))
            {
                throw new QemuArgumentError($"Invalid parameter '{key}'\nqcow2: Invalid options for file format '{format}'");
            }

            values[key] = equals < 0 ? "on" : pair[(equals + 1)..];
        }

        return values;
    }

    private static bool Flag(Dictionary<string, string> options, string key) =>
        options.GetValueOrDefault(key) is { } text && Qcow2OptionValues.OnOff(key, text);

    private static string Human(Qcow2Measurement measurement)
    {
        var text = string.Create(CultureInfo.InvariantCulture, $"required size: {measurement.Required}\nfully allocated size: {measurement.FullyAllocated}\n");
        return measurement.Bitmaps is long bitmaps ? text + string.Create(CultureInfo.InvariantCulture, $"bitmaps size: {bitmaps}\n") : text;
    }

    /// <summary>qemu-img's BlockMeasureInfo: the optional "bitmaps" member comes first.</summary>
    private static string Json(Qcow2Measurement measurement) => Cli.Json.Write(w =>
    {
        w.WriteStartObject();
        if (measurement.Bitmaps is long bitmaps)
        {
            w.WriteNumber("bitmaps", bitmaps);
        }

        w.WriteNumber("required", measurement.Required);
        w.WriteNumber("fully-allocated", measurement.FullyAllocated);
        w.WriteEndObject();
    }) + "\n";
}
