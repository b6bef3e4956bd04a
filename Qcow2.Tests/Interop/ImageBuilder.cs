using System.Globalization;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Interop;

/// <summary>Builds test images with qemu-img and qemu-io inside one directory.</summary>
public sealed class ImageBuilder
{
    public ImageBuilder(string directory)
    {
        Directory = directory;
        Qemu.WorkingDirectory.Value = directory;
    }

    public string Directory { get; }

    public string PathOf(string name) => Path.Combine(Directory, name);

    /// <summary>qemu-img create -f qcow2 [-o options] [-b backing -F fmt] name size.</summary>
    public string Create(string name, long? size, string options = "", string? backing = null, string? backingFormat = null)
    {
        var args = new List<string> { "create", "-f", "qcow2" };
        if (options.Length > 0)
        {
            args.AddRange(["-o", options]);
        }

        if (backing is not null)
        {
            args.AddRange(["-b", backing, "-F", backingFormat ?? "qcow2"]);
        }

        args.Add(PathOf(name));
        if (size is long bytes)
        {
            args.Add(bytes.ToString(CultureInfo.InvariantCulture));
        }

        Qemu.Img([.. args]);
        return PathOf(name);
    }

    /// <summary>qemu-img create -f raw name size.</summary>
    public string CreateRaw(string name, long size)
    {
        Qemu.Img("create", "-f", "raw", PathOf(name), size.ToString(CultureInfo.InvariantCulture));
        return PathOf(name);
    }

    public void Io(string image, params string[] commands) => Qemu.Io(image, commands);

    public void IoRaw(string image, params string[] commands) => Qemu.IoFormat("raw", image, commands);

    /// <summary>
    /// Distinct patterns at the places readers get wrong: the first cluster, a partial cluster,
    /// across an L2 table boundary (when the disk reaches it), the last cluster.
    /// </summary>
    public static string[] ScatteredWrites(long size, int clusterSize, long l2Coverage)
    {
        var commands = new List<string>
        {
            $"write -P 0x11 0 {clusterSize}",
            $"write -P 0x22 {clusterSize + 123} 1000",
        };
        if (2 * l2Coverage <= size)
        {
            commands.Add($"write -P 0x33 {l2Coverage - 4096} 8192");
        }

        commands.Add($"write -P 0x44 {size - clusterSize} {clusterSize}");
        commands.Add($"write -P 0x55 {size / 2 + 512} 3000");
        return [.. commands];
    }

    /// <summary>qemu-img convert -O raw of the image (or of one of its snapshots).</summary>
    public string ToRaw(string image, string? snapshot = null)
    {
        var raw = image + (snapshot is null ? string.Empty : "." + snapshot) + ".expected.raw";
        var args = new List<string> { "convert", "-f", "qcow2", "-O", "raw" };
        if (snapshot is not null)
        {
            args.AddRange(["-l", $"snapshot.name={snapshot}"]);
        }

        args.AddRange([image, raw]);
        Qemu.Img([.. args]);
        return raw;
    }
}

/// <summary>An image built for a matrix cell: its path and the snapshots to compare as well.</summary>
public sealed record BuiltImage(string Path, IReadOnlyList<string> Snapshots)
{
    public BuiltImage(string path)
        : this(path, [])
    {
    }
}
