using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 measure [--output human|json] [-f FMT] [-O raw|qcow2] [-o OPTIONS] (--size SIZE | SRC)</summary>
internal static class MeasureCommand
{
    public const string Usage = "qcow2 measure [--output human|json] [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-U] (--size SIZE | SRC)";

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
        var line = CommandLine.Parse(args, ["-f", "-O", "-o", "--size", "--output", "-l"], ["-U", "--force-share"]);
        var json = OutputMode.IsJson(line.Value("--output"));
        if (line.Has("-l"))
        {
            throw new NotSupportedException("Measuring an internal snapshot (-l) is not supported.");
        }

        long? size = line.Value("--size") is { } sizeText ? CreateCommand.ParseImageSize(sizeText) : null;
        if (line.Positionals.Count > 1)
        {
            throw new UsageException("At most one filename argument is allowed.");
        }

        var sourcePath = line.Positionals.Count == 1 ? line.Positionals[0] : null;
        if (sourcePath is null && size is null)
        {
            throw new UsageException("Either --size N or one filename must be specified.");
        }

        if (sourcePath is not null && size is not null)
        {
            throw new UsageException("--size N cannot be used together with a filename.");
        }

        var target = line.Value("-O") ?? "raw"; // qemu-img's default output format
        var options = ParseOptions(line.Values("-o"), target switch
        {
            "raw" => RawKeys,
            "qcow2" => Qcow2Keys,
            _ => throw new UsageException($"output format '{target}' cannot be measured; use raw or qcow2"),
        });

        CheckCommonOptions(options);
        using var source = sourcePath is null ? null : DiskSource.Open(sourcePath, line.Value("-f"));
        var measurement = target == "raw" ? MeasureRaw(source, size ?? 0) : MeasureQcow2(source, size, options);
        Console.Out.Write(json ? Json(measurement) : Human(measurement));
        return 0;
    }

    /// <summary>A raw file is as long as the disk, whatever is allocated; sizes count whole sectors.</summary>
    private static Qcow2Measurement MeasureRaw(DiskSource? source, long size)
    {
        var bytes = source?.Size ?? ((size + 511) / 512 * 512);
        return new Qcow2Measurement(bytes, bytes, null);
    }

    private static Qcow2Measurement MeasureQcow2(DiskSource? source, long? size, Dictionary<string, string> options)
    {
        var create = Qcow2Options(options, size);
        try
        {
            return source switch
            {
                null => Qcow2Image.Measure(create),
                { Image: { } image } => Qcow2Image.Measure(create, image),
                _ => Qcow2Image.Measure(create, source.Size, source.Map(0, source.Size)),
            };
        }
        catch (ArgumentException error) when (error.ParamName == "options")
        {
            // The library names the parameter; on the command line the option text says it all.
            throw new InvalidOperationException(error.Message.Replace($" (Parameter '{error.ParamName}')", string.Empty, StringComparison.Ordinal), error);
        }
    }

    /// <summary>
    /// Options that do not change the figures are still checked for well-formed values, so a
    /// typo is reported rather than silently measured (qemu-img ignores some of them unread).
    /// </summary>
    private static void CheckCommonOptions(Dictionary<string, string> options)
    {
        foreach (var flag in new[] { "lazy_refcounts", "data_file_raw", "nocow" })
        {
            Flag(options, flag);
        }

        foreach (var sizeKey in new[] { "size", "extent_size_hint" })
        {
            if (options.GetValueOrDefault(sizeKey) is { } text)
            {
                Sizes.Parse(text, sizeKey);
            }
        }

        if (options.GetValueOrDefault("compression_type") is { } compression && compression is not ("zlib" or "zstd"))
        {
            throw new UsageException($"invalid compression_type '{compression}' (use zlib or zstd)");
        }

        PreallocationMode(options);
    }

    /// <summary>The options qemu-img measure honours for a qcow2 target.</summary>
    private static Qcow2CreateOptions Qcow2Options(Dictionary<string, string> options, long? size)
    {
        if (options.ContainsKey("encryption") || options.ContainsKey("encrypt.format"))
        {
            throw new NotSupportedException("Measuring encrypted qcow2 images is not supported.");
        }

        return new Qcow2CreateOptions
        {
            // --size wins over -o size; with a source, -o size is only checked against qcow2's limits.
            Size = size ?? (options.GetValueOrDefault("size") is { } text ? Sizes.Parse(text) : null),
            ExtendedL2 = Flag(options, "extended_l2"),
            ClusterSize = options.GetValueOrDefault("cluster_size") is { } cluster ? ClusterSize(cluster) : 65536,
            Version = options.GetValueOrDefault("compat") switch
            {
                null or "1.1" => 3,
                "0.10" => 2,
                var other => throw new UsageException($"Invalid compatibility level: '{other}' (use 0.10 or 1.1)"),
            },
            RefcountBits = options.GetValueOrDefault("refcount_bits") is { } bits
                ? int.TryParse(bits, NumberStyles.None, CultureInfo.InvariantCulture, out var value) ? value : throw new UsageException($"invalid value '{bits}' for refcount_bits (expected a whole number)")
                : 16,
            Preallocation = PreallocationMode(options),
            BackingFile = options.GetValueOrDefault("backing_file"),
        };
    }

    private static Preallocation PreallocationMode(Dictionary<string, string> options) => options.GetValueOrDefault("preallocation") switch
    {
        null or "off" => Preallocation.Off,
        "metadata" => Preallocation.Metadata,
        "falloc" => Preallocation.Falloc,
        "full" => Preallocation.Full,
        var other => throw new UsageException($"invalid preallocation mode '{other}' (use off, metadata, falloc or full)"),
    };

    private static int ClusterSize(string text)
    {
        var bytes = Sizes.Parse(text, "cluster_size");
        return bytes <= int.MaxValue ? (int)bytes : throw new UsageException($"Cluster size {bytes} is not a power of two between 512 and 2048k.");
    }

    /// <summary>Every -o key=value[,key=value] argument merged, later values winning; keys outside <paramref name="known"/> are refused.</summary>
    private static Dictionary<string, string> ParseOptions(IEnumerable<string> optionStrings, string[] known)
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
                throw new UsageException($"invalid parameter '{key}' for this output format (try -o help)");
            }

            values[key] = equals < 0 ? "on" : pair[(equals + 1)..];
        }

        return values;
    }

    /// <summary>An on/off option, with the spellings qemu accepts.</summary>
    private static bool Flag(Dictionary<string, string> options, string key) => options.GetValueOrDefault(key) switch
    {
        null or "off" or "no" or "false" or "n" => false,
        "on" or "yes" or "true" or "y" => true,
        var other => throw new UsageException($"Parameter '{key}' expects 'on' or 'off', not '{other}'"),
    };

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
