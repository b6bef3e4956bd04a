using System.Globalization;
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
    private readonly HashSet<string> _extensionKeys;

    /// <param name="optionStrings">Every -o argument, in order.</param>
    /// <param name="extensionKeys">Extra keys understood by loaded extensions (e.g. dedup).</param>
    public CreateOptionParser(IEnumerable<string> optionStrings, IEnumerable<string>? extensionKeys = null)
    {
        _extensionKeys = new HashSet<string>(extensionKeys ?? [], StringComparer.Ordinal);
        foreach (var text in optionStrings)
        {
            foreach (var pair in text.Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                var equals = pair.IndexOf('=', StringComparison.Ordinal);
                var key = equals < 0 ? pair : pair[..equals];
                var value = equals < 0 ? "on" : pair[(equals + 1)..];
                if (key == "help" || key == "?")
                {
                    throw new UsageException("supported options: " + string.Join(", ", KnownKeys.Concat(_extensionKeys)));
                }

                if (!KnownKeys.Contains(key) && !_extensionKeys.Contains(key))
                {
                    throw new UsageException($"invalid parameter '{key}' (try -o help)");
                }

                _values[key] = value;
            }
        }
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

        var version = this["compat"] switch
        {
            null or "1.1" or "v3" => 3,
            "0.10" or "v2" => 2,
            var other => throw new UsageException($"invalid compat value '{other}' (use 0.10 or 1.1)"),
        };
        return new Qcow2CreateOptions
        {
            Size = this["size"] is { } text ? Sizes.Parse(text) : size,
            Version = version,
            ClusterSize = this["cluster_size"] is { } cluster ? checked((int)Sizes.Parse(cluster, "cluster_size")) : 65536,
            RefcountBits = Int("refcount_bits") ?? 16,
            LazyRefcounts = Flag("lazy_refcounts"),
            ExtendedL2 = Flag("extended_l2"),
            CompressionType = this["compression_type"] switch
            {
                null or "zlib" => CompressionType.Deflate,
                "zstd" => CompressionType.Zstd,
                var other => throw new UsageException($"invalid compression_type '{other}' (use zlib or zstd)"),
            },
            Preallocation = this["preallocation"] switch
            {
                null or "off" => Preallocation.Off,
                "metadata" => Preallocation.Metadata,
                "falloc" => Preallocation.Falloc,
                "full" => Preallocation.Full,
                var other => throw new UsageException($"invalid preallocation mode '{other}' (use off, metadata, falloc or full)"),
            },
            BackingFile = backingFile ?? this["backing_file"],
            BackingFormat = backingFormat ?? this["backing_fmt"],
            DataFile = this["data_file"],
            DataFileRaw = Flag("data_file_raw"),
        };
    }

    /// <summary>qemu-img's "Formatting …" line.</summary>
    public static string Describe(string path, Qcow2CreateOptions options, long size, bool compatGiven)
    {
        var parts = new List<string>
        {
            $"fmt=qcow2 cluster_size={options.ClusterSize}",
            $"extended_l2={OnOff(options.ExtendedL2)}",
        };
        if (options.Preallocation != Preallocation.Off)
        {
            parts.Add($"preallocation={options.Preallocation.ToString().ToLowerInvariant()}");
        }

        parts.Add($"compression_type={(options.CompressionType == CompressionType.Zstd ? "zstd" : "zlib")}");
        parts.Add($"size={size}");
        if (options.BackingFile is { } backing)
        {
            parts.Add($"backing_file={backing}");
            if (options.BackingFormat is { } format)
            {
                parts.Add($"backing_fmt={format}");
            }
        }

        if (options.DataFile is { } data)
        {
            parts.Add($"data_file={data} data_file_raw={OnOff(options.DataFileRaw)}");
        }

        if (compatGiven)
        {
            parts.Add($"compat={(options.Version == 2 ? "0.10" : "1.1")}");
        }

        parts.Add($"lazy_refcounts={OnOff(options.LazyRefcounts)} refcount_bits={options.RefcountBits}");
        return $"Formatting '{path}', {string.Join(' ', parts)}";
    }

    /// <summary>A whole-number option, or null when absent.</summary>
    public int? Int(string key) => this[key] switch
    {
        null => null,
        var text when int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) => value,
        var text => throw new UsageException($"invalid value '{text}' for {key} (expected a whole number)"),
    };

    /// <summary>An on/off option (off when absent).</summary>
    public bool Flag(string key) => this[key] switch
    {
        null or "off" or "false" or "no" => false,
        "on" or "true" or "yes" => true,
        var other => throw new UsageException($"invalid value '{other}' for {key} (use on or off)"),
    };

    private static string OnOff(bool value) => value ? "on" : "off";
}
