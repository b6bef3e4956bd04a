using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Opens files for <see cref="FileStorage"/>. On Linux with open(2) directly: O_NONBLOCK so that
/// a FIFO cannot block the open, then fstat to refuse anything but a regular file before a single
/// byte is read, and no flock (QEMU's permission locks replace it). Elsewhere through .NET, with
/// the share mode standing in for QEMU's locks.
/// </summary>
internal static class FileOpener
{
    private const int CreateMode = 0x1a4; // 0644, as qemu-img creates images

    public static (SafeFileHandle Handle, FileStatus? Status) Open(string fullPath, bool writable, FileMode mode, FileLockRequest request, FileLocking locking, bool allowNonRegular)
    {
        if (OperatingSystem.IsLinux())
        {
            return OpenLinux(fullPath, writable, mode, allowNonRegular);
        }

        if (Directory.Exists(fullPath))
        {
            throw NotRegular(fullPath, FileType.Directory);
        }

        var share = locking == FileLocking.Off ? FileShare.ReadWrite | FileShare.Delete : ShareModeFor(request);
        var handle = File.OpenHandle(fullPath, mode, writable ? FileAccess.ReadWrite : FileAccess.Read, share, FileOptions.RandomAccess | FileOptions.Asynchronous);
        return (handle, null);
    }

    /// <summary>The message for a path that is not a regular file, in QEMU's terms.</summary>
    public static IOException NotRegular(string path, FileType type) =>
        new($"Could not open '{path}': it is {Describe(type)}, not a regular file (the 'file' driver requires a regular file)");

    private static (SafeFileHandle, FileStatus?) OpenLinux(string fullPath, bool writable, FileMode mode, bool allowNonRegular)
    {
        var flags = (writable ? Posix.ReadWrite : Posix.ReadOnly) | Posix.CloseOnExec | Posix.NonBlocking | Posix.NoControllingTerminal;
        flags |= mode switch
        {
            FileMode.OpenOrCreate => Posix.Create,
            FileMode.CreateNew => Posix.Create | Posix.Exclusive,
            _ => 0,
        };
        var descriptor = Posix.Open(fullPath, flags, CreateMode);
        if (descriptor < 0)
        {
            throw OpenFailed(fullPath, System.Runtime.InteropServices.Marshal.GetLastPInvokeError());
        }

        var handle = new SafeFileHandle(descriptor, ownsHandle: true);
        try
        {
            FileStatus? status = Posix.TryStat(descriptor, out var stat) ? stat : null;
            var type = status?.Type ?? FileType.Regular;
            if (type != FileType.Regular && !allowNonRegular)
            {
                throw NotRegular(fullPath, type);
            }

            if (!Posix.ClearNonBlocking(descriptor))
            {
                throw new IOException($"Could not open '{fullPath}': cannot clear O_NONBLOCK");
            }

            return (handle, status);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static Exception OpenFailed(string path, int errno)
    {
        var message = $"Could not open '{path}': {Posix.Describe(errno)}";
        return errno switch
        {
            Posix.NoSuchFile => new FileNotFoundException(message, path),
            Posix.AccessDenied or 1 => new UnauthorizedAccessException(message),
            21 => NotRegular(path, FileType.Directory), // EISDIR: a directory opened for writing
            _ => new IOException(message),
        };
    }

    /// <summary>
    /// Windows share modes express QEMU's rule directly: forbidding others' writes is FileShare.Read.
    /// On other Unix systems .NET maps FileShare.None to an exclusive flock and anything else to a shared one.
    /// </summary>
    private static FileShare ShareModeFor(FileLockRequest request)
    {
        if (!OperatingSystem.IsWindows() && (request.Held & BlockPermissions.Write) != 0)
        {
            return FileShare.None;
        }

        return (request.Unshared & BlockPermissions.Write) != 0 ? FileShare.Read : FileShare.ReadWrite | FileShare.Delete;
    }

    private static string Describe(FileType type) => type switch
    {
        FileType.Directory => "a directory",
        FileType.Fifo => "a FIFO (named pipe)",
        FileType.CharacterDevice => "a character device",
        FileType.BlockDevice => "a block device",
        FileType.Socket => "a socket",
        _ => "a special file",
    };
}
