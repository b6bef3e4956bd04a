using QcowDedup.Qcow2.DiscUtils;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>Opens the input disk of a verb (the library's <see cref="DiskSource"/>) with the command line's checks and messages.</summary>
internal static class Disks
{
    /// <summary>
    /// DiscUtils' VHDX code sizes its metadata values with Marshal.SizeOf(typeof(T)) for T = ulong, uint
    /// and Guid; the native build keeps marshalling data only for types it sees passed to SizeOf, so
    /// they are named here (the generic overload is what the AOT analysis accepts). Returns the sum only so the calls cannot be dropped.
    /// </summary>
    public static int KeepMarshallingData() =>
        System.Runtime.InteropServices.Marshal.SizeOf<ulong>() + System.Runtime.InteropServices.Marshal.SizeOf<uint>() +
        System.Runtime.InteropServices.Marshal.SizeOf<Guid>();

    /// <summary>Every input format, by qemu-img's names.</summary>
    public static string FormatList { get; } = string.Join(", ", ["qcow2", "raw", .. ForeignDisks.Formats]);

    /// <summary>
    /// A qcow2 image, a raw file, or a vmdk/vhdx/vpc/vdi disk (read through DiscUtils), chosen by -f
    /// or by the file's signature; qcow2 and raw are locked as qemu-img locks its sources.
    /// </summary>
    public static DiskSource Open(string path, string? format, Qcow2OpenOptions options)
    {
        FileArguments.CheckInput(path);
        format ??= DiskSource.ProbeFormat(path) is "qcow2" ? "qcow2" : ForeignDisks.Probe(path) ?? "raw";
        if (ForeignDisks.IsForeign(format))
        {
            KeepMarshallingData();
            return ForeignDisks.Open(path, format);
        }

        if (format == "qcow2" && DiskSource.ProbeFormat(path) != "qcow2")
        {
            throw new IOException($"Could not open '{path}': Image is not in qcow2 format");
        }

        return format is "qcow2" or "raw"
            ? DiskSource.Open(path, format, options)
            : throw new UsageException($"unknown or unsupported format '{format}' (use {FormatList})");
    }
}
