namespace QcowDedup.Qcow2.Storage;

/// <summary>Disk space a file really occupies (st_blocks × 512), as qemu-img reports "actual-size".</summary>
internal static class FileSystemInfoProbe
{
    /// <summary>Allocated bytes of the storage's file, or its length when that cannot be learned.</summary>
    public static long AllocatedBytes(IStorage storage) =>
        storage.Path is { } path && OperatingSystem.IsLinux() && Posix.TryStat(path, out var status) ? status.AllocatedBytes : storage.Length;
}
