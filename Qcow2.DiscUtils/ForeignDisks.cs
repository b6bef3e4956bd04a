using System.Buffers.Binary;
using System.Text;
using DiscUtils;
using DiscUtils.Streams;
using QcowDedup.Qcow2.Image;
using Vdi = DiscUtils.Vdi;
using Vhd = DiscUtils.Vhd;
using Vhdx = DiscUtils.Vhdx;
using Vmdk = DiscUtils.Vmdk;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// Disks in VMDK, VHDX, VHD ("vpc", as qemu-img names it) and VDI format, through DiscUtils: as a
/// <see cref="DiskSource"/> to convert, compare or inspect, and as a new file to copy a disk into.
/// </summary>
public static class ForeignDisks
{
    /// <summary>The formats, by qemu-img's names.</summary>
    public static IReadOnlyList<string> Formats { get; } = ["vmdk", "vhdx", "vpc", "vdi"];

    /// <summary>The create options (-o) each format takes, as qemu-img names them.</summary>
    public static IReadOnlyDictionary<string, IReadOnlyList<string>> CreateOptionKeys { get; } = new Dictionary<string, IReadOnlyList<string>>
    {
        ["vmdk"] = ["subformat", "adapter_type"],
        ["vhdx"] = ["subformat", "block_size"],
        ["vpc"] = ["subformat"],
        ["vdi"] = ["static"],
    };

    /// <summary>Whether <paramref name="format"/> is one of <see cref="Formats"/>.</summary>
    public static bool IsForeign(string? format) => format is not null && Formats.Contains(format);

    /// <summary>
    /// The format of the file by its signature at the start, as qemu-img probes, or null when it is none
    /// of these. Like qemu-img, a fixed VHD (its only signature is the footer) probes as raw: name it with -f vpc.
    /// </summary>
    public static string? Probe(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var head = new byte[512];
        var read = file.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        var text = Encoding.ASCII.GetString(head, 0, Math.Min(read, 64));
        if (text.StartsWith("KDMV", StringComparison.Ordinal) || text.StartsWith("# Disk DescriptorFile", StringComparison.Ordinal))
        {
            return "vmdk";
        }

        if (text.StartsWith("vhdxfile", StringComparison.Ordinal))
        {
            return "vhdx";
        }

        if (read >= 0x44 && BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(0x40)) == 0xbeda107f)
        {
            return "vdi";
        }

        if (text.StartsWith("conectix", StringComparison.Ordinal))
        {
            return "vpc";
        }

        return null;
    }

    /// <summary>Whether the file carries <paramref name="format"/>'s signature (for vpc, also a fixed VHD's footer at the end).</summary>
    private static bool HasSignature(string path, string format)
    {
        if (Probe(path) == format)
        {
            return true;
        }

        if (format != "vpc")
        {
            return false;
        }

        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        if (file.Length < 512)
        {
            return false;
        }

        var footer = new byte[8];
        file.Position = file.Length - 512;
        file.ReadExactly(footer);
        return Encoding.ASCII.GetString(footer) == "conectix";
    }

    /// <summary>Opens a disk of <paramref name="format"/> to read; its extents are where the format stores data.</summary>
    /// <exception cref="ArgumentException">The format is not one of <see cref="Formats"/>.</exception>
    /// <exception cref="InvalidDataException">DiscUtils cannot read the file as that format.</exception>
    public static DiskSource Open(string path, string format)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (IsForeign(format) && !HasSignature(path, format))
        {
            // DiscUtils does not check every signature (its VDI reader accepts a VMDK); qemu-img refuses.
            throw new InvalidDataException($"{path} is not in {format} format (its signature is missing).");
        }

        var disk = Wrap(format, path, () => format switch
        {
            "vmdk" => new Vmdk.Disk(path, FileAccess.Read),
            "vhdx" => new Vhdx.Disk(path, FileAccess.Read),
            "vpc" => new Vhd.Disk(path, FileAccess.Read),
            "vdi" => (VirtualDisk)new Vdi.Disk(path, FileAccess.Read),
            _ => throw new ArgumentException($"Unknown format '{format}' (DiscUtils formats: {string.Join(", ", Formats)}).", nameof(format)),
        });
        return DiskSource.FromStorage(new VirtualDiskStorage(disk, Path.GetFullPath(path), writable: false), format);
    }

    /// <summary>
    /// Creates a disk of <paramref name="format"/> holding <paramref name="size"/> bytes (zeros) and
    /// returns its content as a storage to copy into (see <see cref="ImageCopier.CopyToRaw(DiskSource, Storage.IStorage, ImageCopyOptions?)"/>).
    /// <paramref name="options"/> are qemu-img's -o keys for the format (<see cref="CreateOptionKeys"/>).
    /// </summary>
    public static Storage.IStorage Create(string path, string format, long size, IReadOnlyDictionary<string, string>? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        options ??= new Dictionary<string, string>();
        if (!CreateOptionKeys.TryGetValue(format, out var keys))
        {
            throw new ArgumentException($"Unknown format '{format}' (DiscUtils formats: {string.Join(", ", Formats)}).", nameof(format));
        }

        if (options.Keys.FirstOrDefault(k => !keys.Contains(k)) is { } unknown)
        {
            throw new ArgumentException($"Invalid option '{unknown}' for format {format} (it takes: {string.Join(", ", keys)}).");
        }

        options.TryGetValue("subformat", out var subformat);
        FileStream? file = null;
        var disk = format switch
        {
            "vmdk" => CreateVmdk(path, size, subformat, options.GetValueOrDefault("adapter_type")),
            "vhdx" => CreateWithStream(path, out file, stream => subformat switch
            {
                null or "dynamic" => options.TryGetValue("block_size", out var block)
                    ? Vhdx.Disk.InitializeDynamic(stream, Ownership.Dispose, size, Sizes(block, "block_size"))
                    : Vhdx.Disk.InitializeDynamic(stream, Ownership.Dispose, size),
                "fixed" => throw new NotSupportedException("DiscUtils 0.16 cannot create a fixed vhdx (it reads them); use subformat=dynamic."),
                _ => throw Invalid(format, "subformat", subformat, "dynamic or fixed"),
            }),
            "vpc" => CreateWithStream(path, out file, stream => subformat switch
            {
                null or "dynamic" => Vhd.Disk.InitializeDynamic(stream, Ownership.Dispose, VhdGeometry.Capacity(size), VhdGeometry.For(size)),
                "fixed" => Vhd.Disk.InitializeFixed(stream, Ownership.Dispose, VhdGeometry.Capacity(size), VhdGeometry.For(size)),
                _ => throw Invalid(format, "subformat", subformat, "dynamic or fixed"),
            }),
            _ => CreateWithStream(path, out file, stream => options.GetValueOrDefault("static") switch
            {
                null or "off" => Vdi.Disk.InitializeDynamic(stream, Ownership.Dispose, size),
                "on" => Vdi.Disk.InitializeFixed(stream, Ownership.Dispose, size),
                var other => throw Invalid(format, "static", other, "on or off"),
            }),
        };
        return new VirtualDiskStorage(disk, Path.GetFullPath(path), writable: true, file) { RequestedLength = size };
    }

    private static Vmdk.Disk CreateVmdk(string path, long size, string? subformat, string? adapter)
    {
        var type = subformat switch
        {
            null or "monolithicSparse" => Vmdk.DiskCreateType.MonolithicSparse,
            "monolithicFlat" => Vmdk.DiskCreateType.MonolithicFlat,
            "twoGbMaxExtentSparse" => Vmdk.DiskCreateType.TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Vmdk.DiskCreateType.TwoGbMaxExtentFlat,
            "streamOptimized" => Vmdk.DiskCreateType.StreamOptimized,
            _ => throw Invalid("vmdk", "subformat", subformat, "monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat or streamOptimized"),
        };
        var adapterType = adapter switch
        {
            null or "ide" => Vmdk.DiskAdapterType.Ide,
            "buslogic" => Vmdk.DiskAdapterType.BusLogicScsi,
            "lsilogic" => Vmdk.DiskAdapterType.LsiLogicScsi,
            "legacyESX" => Vmdk.DiskAdapterType.LegacyEsx,
            _ => throw Invalid("vmdk", "adapter_type", adapter, "ide, buslogic, lsilogic or legacyESX"),
        };
        ReplaceExisting(path);
        try
        {
            return Vmdk.Disk.Initialize(Path.GetFullPath(path), size, type, adapterType);
        }
        catch (NotSupportedException error)
        {
            throw new NotSupportedException($"DiscUtils cannot create a {subformat} vmdk ({error.Message}); it reads them, and writes monolithicSparse, monolithicFlat, twoGbMaxExtentSparse and twoGbMaxExtentFlat.", error);
        }
    }

    private static VirtualDisk CreateWithStream(string path, out FileStream file, Func<Stream, VirtualDisk> initialize)
    {
        ReplaceExisting(path);
        var stream = file = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        try
        {
            return initialize(stream);
        }
        catch
        {
            stream.Dispose();
            File.Delete(path);
            throw;
        }
    }

    private static void ReplaceExisting(string path)
    {
        // qemu-img replaces an existing target; DiscUtils' initialisers do not all truncate, so start from nothing.
        if (File.Exists(path))
        {
            File.Delete(path);
        }
    }

    private static VirtualDisk Wrap(string format, string path, Func<VirtualDisk> open)
    {
        try
        {
            return open();
        }
        catch (Exception error) when (error is IOException or InvalidOperationException or NotSupportedException or IndexOutOfRangeException or ArgumentException
                                          && error is not FileNotFoundException and not DirectoryNotFoundException and not UnauthorizedAccessException)
        {
            throw new InvalidDataException($"{path} could not be read as {format}: {error.Message}", error);
        }
    }

    private static long Sizes(string text, string key) =>
        long.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value) && value > 0
            ? value
            : throw Invalid("vhdx", key, text, "a size in bytes");

    private static ArgumentException Invalid(string format, string key, string? value, string expected) =>
        new($"Invalid value '{value}' for {format} option '{key}' (expected {expected}).");
}
