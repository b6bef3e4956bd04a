using System.Globalization;
using System.Numerics;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// The values of qemu-img's qcow2 -o options, read with QEMU's rules and reported in its words
/// (QemuOpts for syntax, qcow2_co_create for ranges), one line each. create, convert, measure,
/// amend and dedup share them, so a value means the same to every verb.
/// </summary>
internal static class Qcow2OptionValues
{
    private const int MinClusterSize = 512;
    private const int MaxClusterSize = 2 << 20;
    private const int MaxRefcountBits = 64;

    /// <summary>cluster_size: a size that is a power of two from 512 bytes to 2 MiB.</summary>
    public static int ClusterSize(string text)
    {
        var bytes = Sizes.ParseParameter("cluster_size", text);
        return bytes is >= MinClusterSize and <= MaxClusterSize && BitOperations.IsPow2(bytes)
            ? (int)bytes
            : throw new UsageException("Cluster size must be a power of two between 512 and 2048k");
    }

    /// <summary>refcount_bits: a power of two up to 64.</summary>
    public static int RefcountBits(string text)
    {
        var bits = Number("refcount_bits", text);
        return bits <= MaxRefcountBits && BitOperations.IsPow2(bits)
            ? bits
            : throw new UsageException("Refcount width must be a power of two and may not exceed 64 bits");
    }

    /// <summary>compat: the qcow2 version, 2 for "0.10" (or "v2") and 3 for "1.1" (or "v3").</summary>
    public static int Version(string text) => text switch
    {
        "0.10" or "v2" => 2,
        "1.1" or "v3" => 3,
        _ => throw new UsageException($"Parameter 'compat' does not accept value '{text}' (use 0.10 or 1.1)"),
    };

    public static Preallocation Preallocation(string text) => text switch
    {
        "off" => Qcow2.Image.Preallocation.Off,
        "metadata" => Qcow2.Image.Preallocation.Metadata,
        "falloc" => Qcow2.Image.Preallocation.Falloc,
        "full" => Qcow2.Image.Preallocation.Full,
        _ => throw new UsageException($"Parameter 'preallocation' does not accept value '{text}' (use off, metadata, falloc or full)"),
    };

    public static CompressionType CompressionType(string text) => text switch
    {
        "zlib" => Qcow2.Format.CompressionType.Deflate,
        "zstd" => Qcow2.Format.CompressionType.Zstd,
        _ => throw new UsageException($"Parameter 'compression_type' does not accept value '{text}' (use zlib or zstd)"),
    };

    /// <summary>An on/off option, in every spelling QEMU's boolean parser takes.</summary>
    public static bool OnOff(string name, string text) => text switch
    {
        "on" or "yes" or "true" or "y" => true,
        "off" or "no" or "false" or "n" => false,
        _ => throw new UsageException($"Parameter '{name}' expects 'on' or 'off'"),
    };

    /// <summary>A whole, non-negative number that fits an int.</summary>
    public static int Number(string name, string text) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value)
            ? value
            : throw new UsageException($"Parameter '{name}' expects a number");
}
