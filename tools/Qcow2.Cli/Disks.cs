using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>Opens the input disk of a verb (the library's <see cref="DiskSource"/>) with the command line's checks and messages.</summary>
internal static class Disks
{
    /// <summary>A qcow2 image or a raw file, chosen by -f or by the magic number, locked as qemu-img locks its sources.</summary>
    public static DiskSource Open(string path, string? format, Qcow2OpenOptions options)
    {
        FileArguments.CheckInput(path);
        format ??= DiskSource.ProbeFormat(path);
        return format is "qcow2" or "raw"
            ? DiskSource.Open(path, format, options)
            : throw new UsageException($"unknown or unsupported format '{format}' (use qcow2 or raw)");
    }
}
