using System.Globalization;
using DiscUtils.Setup;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>Setup of the DiscUtils adapter, and the create parameters it understands.</summary>
public static class Qcow2DiscUtils
{
    /// <summary>
    /// The <see cref="global::DiscUtils.VirtualDiskParameters.ExtendedParameters"/> keys <c>CreateDisk</c>
    /// understands, named as qemu-img's -o options: cluster_size, compat, refcount_bits, lazy_refcounts,
    /// extended_l2, compression_type, backing_file, backing_fmt, dedup.
    /// </summary>
    public static IReadOnlyList<string> CreateParameterKeys { get; } =
        ["cluster_size", "compat", "refcount_bits", "lazy_refcounts", "extended_l2", "compression_type", "backing_file", "backing_fmt", "dedup"];

    /// <summary>
    /// Registers the ".qcow2" factory with DiscUtils (the same as
    /// <c>SetupHelper.RegisterAssembly(typeof(Qcow2Disk).Assembly)</c>); safe to call more than once.
    /// </summary>
    public static void Register() => SetupHelper.RegisterAssembly(typeof(Qcow2DiscUtils).Assembly);

    /// <summary>Create options for a DiscUtils variant ("dynamic" or "dedup") and extended parameters.</summary>
    /// <exception cref="ArgumentException">An unknown key or a value that does not parse, naming it.</exception>
    public static Qcow2CreateOptions CreateOptions(string variant, long capacity, IReadOnlyDictionary<string, string>? parameters)
    {
        parameters ??= new Dictionary<string, string>();
        foreach (var key in parameters.Keys)
        {
            if (!CreateParameterKeys.Contains(key))
            {
                throw new ArgumentException($"Unknown qcow2 parameter '{key}' (known: {string.Join(", ", CreateParameterKeys)}).", nameof(parameters));
            }
        }

        if (capacity <= 0)
        {
            throw new ArgumentException($"The capacity must be positive (was {capacity}).", nameof(capacity));
        }

        var options = new Qcow2CreateOptions
        {
            Size = capacity,
            ClusterSize = Int(parameters, "cluster_size") ?? (variant == "dedup" ? 4096 : 65536),
            Version = Get(parameters, "compat") switch
            {
                null or "1.1" or "v3" => 3,
                "0.10" or "v2" => 2,
                var other => throw Invalid("compat", other, "0.10 or 1.1"),
            },
            RefcountBits = Int(parameters, "refcount_bits") ?? 16,
            LazyRefcounts = Flag(parameters, "lazy_refcounts"),
            ExtendedL2 = Flag(parameters, "extended_l2"),
            CompressionType = Get(parameters, "compression_type") switch
            {
                null or "zlib" => CompressionType.Deflate,
                "zstd" => CompressionType.Zstd,
                var other => throw Invalid("compression_type", other, "zlib or zstd"),
            },
            BackingFile = Get(parameters, "backing_file"),
            BackingFormat = Get(parameters, "backing_fmt"),
        };
        var dedup = parameters.ContainsKey("dedup") ? Flag(parameters, "dedup") : variant == "dedup";
        return dedup ? options.WithDedup() : options;
    }

    private static string? Get(IReadOnlyDictionary<string, string> parameters, string key) =>
        parameters.TryGetValue(key, out var value) ? value : null;

    private static int? Int(IReadOnlyDictionary<string, string> parameters, string key) =>
        Get(parameters, key) is not { } text ? null
        : int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) ? value
        : throw Invalid(key, text, "a whole number of bytes");

    private static bool Flag(IReadOnlyDictionary<string, string> parameters, string key) =>
        Get(parameters, key)?.ToLowerInvariant() switch
        {
            null or "off" or "false" or "no" => false,
            "on" or "true" or "yes" => true,
            var other => throw Invalid(key, other, "on or off"),
        };

    private static ArgumentException Invalid(string key, string? value, string expected) =>
        new($"Invalid value '{value}' for qcow2 parameter '{key}' (expected {expected}).");
}
