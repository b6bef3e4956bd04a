using System.Numerics;

namespace QcowDedup.Cli;

/// <summary>
/// qemu-img create's checks of the qcow2 -o values, in its order and words: first the option
/// syntax (QemuOpts: before the "Formatting" line), then the values and their combinations
/// (qcow2_co_create: after it). Each message follows "FILE: ".
/// </summary>
internal static class CreateValidation
{
    private const string SizeHint = "\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.";

    /// <summary>A value QemuOpts cannot read (a size, number or on/off that is not one); null when all read.</summary>
    public static string? SyntaxProblem(CreateOptionParser parser)
    {
        foreach (var key in new[] { "size", "cluster_size" })
        {
            if (parser[key] is { } text && Sizes.TryParse(text, out _) != SizeSyntax.Valid)
            {
                return $"Parameter '{key}' expects a non-negative number below 2^64{SizeHint}";
            }
        }

        if (parser["refcount_bits"] is { } bits && !ulong.TryParse(bits, out _))
        {
            return "Parameter 'refcount_bits' expects a number";
        }

        foreach (var key in new[] { "lazy_refcounts", "extended_l2", "data_file_raw" })
        {
            if (parser[key] is { } text && text is not ("on" or "off" or "yes" or "no" or "true" or "false" or "y" or "n"))
            {
                return $"Parameter '{key}' expects 'on' or 'off'";
            }
        }

        return null;
    }

    /// <summary>What qcow2_co_create refuses, first problem first; null when the image can be made.</summary>
    public static string? ValueProblem(CreateOptionParser parser, bool hasBacking, bool hasBackingFormat)
    {
        var compat = parser["compat"];
        if (compat is not (null or "0.10" or "v2" or "1.1" or "v3"))
        {
            return $"Parameter 'version' does not accept value '{compat}'";
        }

        if (parser["preallocation"] is { } preallocation && preallocation is not ("off" or "metadata" or "falloc" or "full"))
        {
            return $"Parameter 'preallocation' does not accept value '{preallocation}'";
        }

        if (parser["compression_type"] is { } compression && compression is not ("zlib" or "zstd"))
        {
            return $"Parameter 'compression-type' does not accept value '{compression}'";
        }

        var v2 = compat is "0.10" or "v2";
        Sizes.TryParse(parser["cluster_size"] ?? "65536", out var clusterSize);
        var extendedL2 = parser.Flag("extended_l2");
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

        if (hasBacking && parser["preallocation"] is { } mode && mode != "off" && !extendedL2)
        {
            return "Backing file and preallocation can only be used at the same time if extended_l2 is on";
        }

        if (hasBackingFormat && !hasBacking)
        {
            return "Backing format cannot be used without backing file";
        }

        if (v2 && parser.Flag("lazy_refcounts"))
        {
            return "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)";
        }

        var refcountBits = ulong.Parse(parser["refcount_bits"] ?? "16", System.Globalization.CultureInfo.InvariantCulture);
        if (refcountBits > 64 || !BitOperations.IsPow2(refcountBits))
        {
            return "Refcount width must be a power of two and may not exceed 64 bits";
        }

        if (v2 && refcountBits != 16)
        {
            return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)";
        }

        var dataFileRaw = parser.Flag("data_file_raw");
        if (dataFileRaw && parser["data_file"] is null)
        {
            return "data-file-raw requires data-file";
        }

        if (dataFileRaw && hasBacking)
        {
            return "Backing file and data-file-raw cannot be used at the same time";
        }

        if (v2 && parser["compression_type"] is "zstd")
        {
            return "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)";
        }

        return v2 && parser["data_file"] is not null
            ? "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"
            : null;
    }
}
