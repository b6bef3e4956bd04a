using System.Globalization;
using System.Numerics;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// The values of qemu-img's qcow2 -o options: checked as QEMU checks them, in its order and words
/// (QemuOpts for syntax, then qcow2_co_create for create and convert, qcow2_measure for measure,
/// qcow2_amend_options for amend), then read. One place for every verb, so a value means the same
/// to each and is refused where and as qemu-img refuses it.
/// </summary>
internal static class Qcow2OptionValues
{
    private const string SizeHint = "\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.";

    /// <summary>
    /// A value QemuOpts cannot read (a size, number or on/off that is not one), checked before
    /// anything else by every verb that takes qcow2 -o options; null when all read.
    /// </summary>
    public static string? SyntaxProblem(Func<string, string?> value)
    {
        foreach (var key in new[] { "size", "cluster_size", "extent_size_hint" })
        {
            if (value(key) is { } text && Sizes.TryParse(text, out _) != SizeSyntax.Valid)
            {
                return $"Parameter '{key}' expects a non-negative number below 2^64{SizeHint}";
            }
        }

        if (value("refcount_bits") is { } bits && !ulong.TryParse(bits, out _))
        {
            return "Parameter 'refcount_bits' expects a number";
        }

        foreach (var key in new[] { "lazy_refcounts", "extended_l2", "data_file_raw", "nocow" })
        {
            if (value(key) is { } text && text is not ("on" or "off" or "yes" or "no" or "true" or "false" or "y" or "n"))
            {
                return $"Parameter '{key}' expects 'on' or 'off'";
            }
        }

        return null;
    }

    /// <summary>What qcow2_co_create refuses (create, convert), first problem first; null when the image can be made.</summary>
    public static string? CreateProblem(Func<string, string?> value, bool hasBacking, bool hasBackingFormat)
    {
        var compat = value("compat");
        if (compat is not (null or "0.10" or "v2" or "1.1" or "v3"))
        {
            return $"Parameter 'version' does not accept value '{compat}'";
        }

        if (value("preallocation") is { } preallocation && preallocation is not ("off" or "metadata" or "falloc" or "full"))
        {
            return $"Parameter 'preallocation' does not accept value '{preallocation}'";
        }

        if (value("compression_type") is { } compression && compression is not ("zlib" or "zstd"))
        {
            return $"Parameter 'compression-type' does not accept value '{compression}'";
        }

        var v2 = compat is "0.10" or "v2";
        Sizes.TryParse(value("cluster_size") ?? "65536", out var clusterSize);
        var extendedL2 = Flag(value, "extended_l2");
        if (clusterSize is < 512 or > 2 << 20 || !BitOperations.IsPow2(clusterSize))
        {
            return "Cluster size must be a power of two between 512 and 2048k";
        }

        if (extendedL2 && clusterSize < 16384)
        {
            return "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";
        }

        if (extendedL2 && v2)
        {
            return "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)";
        }

        if (hasBacking && value("preallocation") is { } mode && mode != "off" && !extendedL2)
        {
            return "Backing file and preallocation can only be used at the same time if extended_l2 is on";
        }

        if (hasBackingFormat && !hasBacking)
        {
            return "Backing format cannot be used without backing file";
        }

        if (v2 && Flag(value, "lazy_refcounts"))
        {
            return "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)";
        }

        var refcountBits = ulong.Parse(value("refcount_bits") ?? "16", System.Globalization.CultureInfo.InvariantCulture);
        if (refcountBits > 64 || !BitOperations.IsPow2(refcountBits))
        {
            return "Refcount width must be a power of two and may not exceed 64 bits";
        }

        if (v2 && refcountBits != 16)
        {
            return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)";
        }

        var dataFileRaw = Flag(value, "data_file_raw");
        if (dataFileRaw && value("data_file") is null)
        {
            return "data-file-raw requires data-file";
        }

        if (dataFileRaw && hasBacking)
        {
            return "Backing file and data-file-raw cannot be used at the same time";
        }

        if (v2 && value("compression_type") is "zstd")
        {
            return "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)";
        }

        return v2 && value("data_file") is not null
            ? "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"
            : null;
    }

    /// <summary>
    /// The syntax problems qemu-img measure reports while it reads -o, before it opens the source,
    /// with its second line naming the output format.
    /// </summary>
    public static string? MeasureSyntaxProblem(Func<string, string?> value, string format) =>
        SyntaxProblem(value) is { } problem ? $"{problem}\nqcow2: Invalid options for file format '{format}'" : null;

    /// <summary>
    /// What qcow2_measure refuses, in its order and words, once the source is open: it reads fewer
    /// options than create (compression_type, lazy_refcounts with compat=0.10, data_file_raw are not looked at).
    /// </summary>
    public static string? MeasureValueProblem(Func<string, string?> value)
    {
        Sizes.TryParse(value("cluster_size") ?? "65536", out var clusterSize);
        if (clusterSize is < 512 or > 2 << 20 || !BitOperations.IsPow2(clusterSize))
        {
            return "Cluster size must be a power of two between 512 and 2048k";
        }

        var compat = value("compat");
        if (compat is not (null or "0.10" or "v2" or "1.1" or "v3"))
        {
            return $"Invalid compatibility level: '{compat}'";
        }

        var refcountBits = ulong.Parse(value("refcount_bits") ?? "16", System.Globalization.CultureInfo.InvariantCulture);
        if (refcountBits > 64 || !BitOperations.IsPow2(refcountBits))
        {
            return "Refcount width must be a power of two and may not exceed 64 bits";
        }

        if (compat is "0.10" or "v2" && refcountBits != 16)
        {
            return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)";
        }

        if (Flag(value, "extended_l2") && clusterSize < 16384)
        {
            return "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";
        }

        return value("preallocation") is { } mode && mode is not ("off" or "metadata" or "falloc" or "full") ? $"invalid parameter value: {mode}" : null;
    }

    /// <summary>What qcow2_amend_options says of a compat value it does not know; null when it knows it.</summary>
    public static string? AmendCompatProblem(string? compat) =>
        compat is null or "0.10" or "v2" or "1.1" or "v3" ? null : $"Unknown compatibility level {compat}";

    private static bool Flag(Func<string, string?> value, string key) => value(key) is { } text && text is "on" or "yes" or "true" or "y";

    private const int MinClusterSize = 512;
    private const int MaxClusterSize = 2 << 20;
    private const int MaxRefcountBits = 64;

    /// <summary>cluster_size: a size that is a power of two from 512 bytes to 2 MiB.</summary>
    public static int ClusterSize(string text)
    {
        var bytes = Sizes.ParseParameter("cluster_size", text);
        return bytes is >= MinClusterSize and <= MaxClusterSize && BitOperations.IsPow2(bytes)
            ? (int)bytes
            : throw new QemuArgumentError("Cluster size must be a power of two between 512 and 2048k");
    }

    /// <summary>refcount_bits: a power of two up to 64.</summary>
    public static int RefcountBits(string text)
    {
        var bits = Number("refcount_bits", text);
        return bits <= MaxRefcountBits && BitOperations.IsPow2(bits)
            ? bits
            : throw new QemuArgumentError("Refcount width must be a power of two and may not exceed 64 bits");
    }

    /// <summary>compat: the qcow2 version, 2 for "0.10" (or "v2") and 3 for "1.1" (or "v3").</summary>
    public static int Version(string text) => text switch
    {
        "0.10" or "v2" => 2,
        "1.1" or "v3" => 3,
        _ => throw new QemuArgumentError($"Parameter 'version' does not accept value '{text}'"),
    };

    public static Preallocation Preallocation(string text) => text switch
    {
        "off" => Qcow2.Image.Preallocation.Off,
        "metadata" => Qcow2.Image.Preallocation.Metadata,
        "falloc" => Qcow2.Image.Preallocation.Falloc,
        "full" => Qcow2.Image.Preallocation.Full,
        _ => throw new QemuArgumentError($"Parameter 'preallocation' does not accept value '{text}'"),
    };

    public static CompressionType CompressionType(string text) => text switch
    {
        "zlib" => Qcow2.Format.CompressionType.Deflate,
        "zstd" => Qcow2.Format.CompressionType.Zstd,
        _ => throw new QemuArgumentError($"Parameter 'compression-type' does not accept value '{text}'"),
    };

    /// <summary>An on/off option, in every spelling QEMU's boolean parser takes.</summary>
    public static bool OnOff(string name, string text) => text switch
    {
        "on" or "yes" or "true" or "y" => true,
        "off" or "no" or "false" or "n" => false,
        _ => throw new QemuArgumentError($"Parameter '{name}' expects 'on' or 'off'"),
    };

    /// <summary>A whole, non-negative number that fits an int.</summary>
    public static int Number(string name, string text) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value)
            ? value
            : throw new QemuArgumentError($"Parameter '{name}' expects a number");
}
