namespace QcowDedup.Qcow2.Storage;

/// <summary>How <see cref="FileStorage"/> opens a file.</summary>
public sealed record FileStorageOptions
{
    /// <summary>Open for writing.</summary>
    public bool Writable { get; init; }

    /// <summary>
    /// The permissions to hold and to forbid others while the file is open; null takes what QEMU
    /// takes for a raw file (<see cref="FileLockRequest.RawFile(bool)"/>).
    /// </summary>
    public FileLockRequest? Lock { get; init; }

    /// <summary>Whether to lock at all.</summary>
    public FileLocking Locking { get; init; }

    /// <summary>
    /// Allow devices, FIFOs and sockets. Off by default: a FIFO would block the open or the first
    /// read forever, and a device is rarely what an image meant to name.
    /// </summary>
    public bool AllowNonRegularFile { get; init; }
}
