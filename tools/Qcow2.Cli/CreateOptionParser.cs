using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// qemu-img's -o key=value[,key=value] create options for qcow2, turned into
/// <see cref="Qcow2CreateOptions"/>. Several -o options merge, later values winning.
/// </summary>
internal sealed class CreateOptionParser
{
    private static readonly string[] KnownKeys =
    [
        "size", "compat", "backing_file", "backing_fmt", "data_file", "data_file_raw", "encryption", "encrypt.format",
        "cluster_size", "preallocation", "lazy_refcounts", "refcount_bits", "compression_type", "extended_l2",
    ];

    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    /// <param name="optionStrings">Every -o argument, in order.</param>
    /// <param name="extensionKeys">Extra keys understood by loaded extensions (e.g. dedup).</param>
    public CreateOptionParser(IEnumerable<string> optionStrings, IEnumerable<string>? extensionKeys = null)
        : this(optionStrings, [.. KnownKeys, .. extensionKeys ?? []])
    {
    }

    private CreateOptionParser(IEnumerable<string> optionStrings, string[] knownKeys)
    {
        foreach (var text in optionStrings)
        {
            foreach (var pair in text.Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                var equals = pair.IndexOf('=', StringComparison.Ordinal);
                var key = equals < 0 ? pair : pair[..equals];
                var value = equals < 0 ? "on" : pair[(equals + 1)..];
                if (key == "help" || key == "?")
                {
                    throw new UsageException("supported options: " + string.Join(", ", knownKeys));
                }

                if (!knownKeys.Contains(key))
                {
                    throw new UsageException($"Invalid parameter '{key}'");
                }

                _values[key] = value;
            }
        }
    }

    /// <summary>qemu-img's option table for qcow2, in its layout, for the options this tool takes (then the dedup ones).</summary>
    private static readonly (string Key, string Description)[] HelpRows =
    [
        ("backing_file=<str>", "File name of a base image"),
        ("backing_fmt=<str>", "Image format of the base image"),
        ("cluster_size=<size>", "qcow2 cluster size"),
        ("compat=<str>", "Compatibility level (v2 [0.10] or v3 [1.1])"),
        ("compression_type=<str>", "Compression method used for image cluster compression"),
        ("data_file=<str>", "File name of an external data file"),
        ("data_file_raw=<bool (on/off)>", "The external data file must stay valid as a raw image"),
        ("extended_l2=<bool (on/off)>", "Extended L2 tables"),
        ("lazy_refcounts=<bool (on/off)>", "Postpone refcount updates"),
        ("preallocation=<str>", "Preallocation mode (allowed values: off, metadata, falloc, full)"),
        ("refcount_bits=<num>", "Width of a reference count entry in bits"),
        ("size=<size>", "Virtual disk size"),
        ("dedup=<bool (on/off)>", "Deduplicate clusters as they are written (an index in the image)"),
        ("dedup_log_order=<num>", "Log store of 2^N entries"),
        ("dedup_max_incarnations=<num>", "Frozen hash store incarnations kept before packing"),
        ("dedup_memory=<size>", "RAM budget of the dedup index"),
        ("dedup_verify=<bool (on/off)>", "Compare bytes before sharing a cluster"),
        ("dedup_max_shares=<num>", "Most guest clusters sharing one host cluster"),
    ];

    /// <summary>Whether an -o argument asks for the option list (help or ?), as qemu-img's is_help_option.</summary>
    public static bool AsksForHelp(IEnumerable<string> optionStrings) =>
        optionStrings.SelectMany(o => o.Split(',', StringSplitOptions.RemoveEmptyEntries)).Any(key => key is "help" or "?");

    /// <summary>
    /// What `-o help` prints on stdout, laid out as qemu-img prints it: with a target file name the
    /// heading is "Supported options:" and the closing hint about the protocol level is left out.
    /// </summary>
    public static string HelpTable(bool withFileName)
    {
        var text = new System.Text.StringBuilder(withFileName ? "Supported options:\n" : "Supported qcow2 options:\n");
        foreach (var (key, description) in HelpRows)
        {
            text.Append("  ").Append(key.PadRight(22)).Append(" - ").Append(description).Append('\n');
        }

        return withFileName ? text.ToString() : text.Append("\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n").ToString();
    }

    /// <summary>Options for deduplicating an existing image: only the dedup_* keys exist, and dedup is on.</summary>
    public static CreateOptionParser ForDedup(IReadOnlyList<string> optionStrings)
    {
        var parser = new CreateOptionParser(optionStrings, [.. Extensions.CreateOptionKeys.Where(key => key != "dedup")]);
        parser._values["dedup"] = "on";
        return parser;
    }

    public string? this[string key] => _values.GetValueOrDefault(key);

    public bool Has(string key) => _values.ContainsKey(key);

    /// <summary>Builds create options; the size comes from -o size, the SIZE argument or the backing file.</summary>
    public Qcow2CreateOptions Build(long? size, string? backingFile, string? backingFormat)
    {
        if (_values.ContainsKey("encryption") || _values.ContainsKey("encrypt.format"))
        {
            throw new NotSupportedException("Creating encrypted qcow2 images is not supported.");
        }

        return new Qcow2CreateOptions
        {
            Size = this["size"] is { } text ? Sizes.ParseParameter("size", text) : size,
            Version = this["compat"] is { } compat ? Qcow2OptionValues.Version(compat) : 3,
            ClusterSize = this["cluster_size"] is { } cluster ? Qcow2OptionValues.ClusterSize(cluster) : 65536,
            RefcountBits = this["refcount_bits"] is { } bits ? Qcow2OptionValues.RefcountBits(bits) : 16,
            LazyRefcounts = Flag("lazy_refcounts"),
            ExtendedL2 = Flag("extended_l2"),
            CompressionType = this["compression_type"] is { } compression ? Qcow2OptionValues.CompressionType(compression) : CompressionType.Deflate,
            Preallocation = this["preallocation"] is { } preallocation ? Qcow2OptionValues.Preallocation(preallocation) : Preallocation.Off,
            BackingFile = backingFile ?? this["backing_file"],
            BackingFormat = backingFormat ?? this["backing_fmt"],
            DataFile = this["data_file"],
            DataFileRaw = Flag("data_file_raw"),
        };
    }

    /// <summary>
    /// qemu-img's "Formatting …" line: the options in its order, each as given (sizes and numbers as
    /// numbers, on/off as on/off), defaults filled in, optional ones only when given.
    /// </summary>
    public string Describe(string path, long size, string? backingFile, string? backingFormat)
    {
        var parts = new List<string>
        {
            "fmt=qcow2",
            $"cluster_size={SizeOr("cluster_size", 65536)}",
            $"extended_l2={OnOff(Flag("extended_l2"))}",
        };
        if (this["preallocation"] is { } preallocation)
        {
            parts.Add($"preallocation={preallocation}");
        }

        parts.Add($"compression_type={this["compression_type"] ?? "zlib"}");
        parts.Add($"size={size}");
        AddIfGiven("compat", this["compat"]);
        AddIfGiven("backing_file", backingFile ?? this["backing_file"]);
        AddIfGiven("backing_fmt", backingFormat ?? this["backing_fmt"]);
        AddIfGiven("data_file", this["data_file"]);
        AddIfGiven("data_file_raw", this["data_file_raw"] is null ? null : OnOff(Flag("data_file_raw")));
        parts.Add($"lazy_refcounts={OnOff(Flag("lazy_refcounts"))}");
        parts.Add($"refcount_bits={this["refcount_bits"] ?? "16"}");
        return $"Formatting '{path}', {string.Join(' ', parts)}";

        void AddIfGiven(string key, string? value)
        {
            if (value is not null)
            {
                parts.Add($"{key}={value}");
            }
        }
    }

    private long SizeOr(string key, long fallback) => this[key] is { } text && Sizes.TryParse(text, out var bytes) == SizeSyntax.Valid ? bytes : fallback;

    /// <summary>A whole-number option, or null when absent.</summary>
    public int? Int(string key) => this[key] is { } text ? Qcow2OptionValues.Number(key, text) : null;

    /// <summary>An on/off option (off when absent).</summary>
    public bool Flag(string key) => this[key] is { } text && Qcow2OptionValues.OnOff(key, text);

    private static string OnOff(bool value) => value ? "on" : "off";
}
