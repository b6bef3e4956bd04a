namespace QcowDedup.Qcow2.Storage;

/// <summary>Whether files are locked, as QEMU's file driver option <c>locking=auto|off</c>.</summary>
public enum FileLocking
{
    /// <summary>
    /// Lock as QEMU does (the default). On Linux: open-file-description locks on QEMU's permission
    /// bytes, seen by QEMU and by every other open of the file. On Windows: the open's share mode
    /// (a writer lets others read only; a reader forbids writers unless force-shared). On other
    /// systems: the whole-file advisory lock .NET takes (flock), shared for readers, exclusive for writers.
    /// </summary>
    Auto,

    /// <summary>Take no locks and ignore everyone else's. Only for files nobody else can open.</summary>
    Off,
}
