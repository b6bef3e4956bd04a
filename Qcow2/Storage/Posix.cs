using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// The few Linux system calls .NET does not expose: open without blocking on FIFOs, statx on a
/// descriptor, open-file-description locks, realpath. Constants are Linux's generic values
/// (x86-64 and arm64 agree on every one used here).
/// </summary>
internal static unsafe partial class Posix
{
    public const int ReadOnly = 0;
    public const int ReadWrite = 2;
    public const int Create = 0x40;
    public const int Exclusive = 0x80;
    public const int NoControllingTerminal = 0x100;
    public const int NonBlocking = 0x800;
    public const int CloseOnExec = 0x80000;

    public const int NoSuchFile = 2; // ENOENT
    public const int AccessDenied = 13; // EACCES
    public const int FileExists = 17; // EEXIST

    private const int GetStatusFlags = 3; // F_GETFL
    private const int SetStatusFlags = 4; // F_SETFL
    private const int OfdGetLock = 36; // F_OFD_GETLK
    private const int OfdSetLock = 37; // F_OFD_SETLK
    private const short ReadLockType = 0; // F_RDLCK
    private const short WriteLockType = 1; // F_WRLCK
    private const short UnlockType = 2; // F_UNLCK

    private const int EmptyPath = 0x1000; // AT_EMPTY_PATH
    private const int CurrentDirectory = -100; // AT_FDCWD
    private const uint BasicStats = 0x7ff; // STATX_BASIC_STATS
    private const int StatxBufferSize = 256;
    private const int ModeOffset = 28; // struct statx: mask, blksize, attributes, nlink, uid, gid, then mode
    private const int InodeOffset = 32;
    private const int BlocksOffset = 48;
    private const int DeviceMajorOffset = 136;
    private const int DeviceMinorOffset = 140;
    private const int FileTypeMask = 0xF000; // S_IFMT

    /// <summary>open(2); returns the descriptor or -1 with errno set.</summary>
    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    /// <summary>Clears O_NONBLOCK once the descriptor is known to be a regular file.</summary>
    public static bool ClearNonBlocking(int descriptor)
    {
        var flags = FcntlInt(descriptor, GetStatusFlags, 0);
        return flags >= 0 && FcntlInt(descriptor, SetStatusFlags, flags & ~NonBlocking) == 0;
    }

    /// <summary>Type, identity and allocated bytes of an open file; false when statx is missing or fails.</summary>
    public static bool TryStat(int descriptor, out FileStatus status) => TryStatCore(descriptor, string.Empty, EmptyPath, out status);

    /// <summary>Type, identity and allocated bytes of a named file (symbolic links followed).</summary>
    public static bool TryStat(string path, out FileStatus status) => TryStatCore(CurrentDirectory, path, 0, out status);

    /// <summary>Sets (read lock) or releases one byte's open-file-description lock; returns errno or 0.</summary>
    public static int SetByteLock(int descriptor, long offset, bool locked)
    {
        var request = new FileLockStruct { Type = locked ? ReadLockType : UnlockType, Whence = 0, Start = offset, Length = 1 };
        return FcntlLock(descriptor, OfdSetLock, &request) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>Whether some other open file description holds a lock on the byte; errno on failure.</summary>
    public static int TestByteLocked(int descriptor, long offset, out bool lockedByOthers)
    {
        var request = new FileLockStruct { Type = WriteLockType, Whence = 0, Start = offset, Length = 1 };
        var result = FcntlLock(descriptor, OfdGetLock, &request);
        lockedByOthers = result == 0 && request.Type != UnlockType;
        return result == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>realpath(3): the canonical path with every symbolic link resolved, or null.</summary>
    public static string? RealPath(string path)
    {
        var resolved = RealPathNative(path, IntPtr.Zero);
        if (resolved == IntPtr.Zero)
        {
            return null;
        }

        try
        {
            return Marshal.PtrToStringUTF8(resolved);
        }
        finally
        {
            Free(resolved);
        }
    }

    /// <summary>The system's text for an errno value ("No such file or directory").</summary>
    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    private static bool TryStatCore(int directory, string path, int flags, out FileStatus status)
    {
        status = default;
        try
        {
            var buffer = stackalloc byte[StatxBufferSize];
            if (Statx(directory, path, flags, BasicStats, buffer) != 0)
            {
                return false;
            }

            var mode = *(ushort*)(buffer + ModeOffset);
            var device = ((ulong)*(uint*)(buffer + DeviceMajorOffset) << 32) | *(uint*)(buffer + DeviceMinorOffset);
            status = new FileStatus(TypeOf(mode), new FileIdentity(device, *(ulong*)(buffer + InodeOffset)), *(long*)(buffer + BlocksOffset) * 512);
            return true;
        }
        catch (Exception error) when (error is EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }
    }

    private static FileType TypeOf(ushort mode) => (mode & FileTypeMask) switch
    {
        0x8000 => FileType.Regular,
        0x4000 => FileType.Directory,
        0x1000 => FileType.Fifo,
        0x2000 => FileType.CharacterDevice,
        0x6000 => FileType.BlockDevice,
        0xC000 => FileType.Socket,
        _ => FileType.Other,
    };

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int FcntlInt(int descriptor, int command, int argument);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int FcntlLock(int descriptor, int command, FileLockStruct* request);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int directory, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", EntryPoint = "realpath", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr RealPathNative(string path, IntPtr resolved);

    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void Free(IntPtr pointer);

    /// <summary>struct flock as Linux lays it out on 64-bit targets.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct FileLockStruct
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int ProcessId;
    }
}

/// <summary>What kind of file a path names.</summary>
internal enum FileType
{
    Regular,
    Directory,
    Fifo,
    CharacterDevice,
    BlockDevice,
    Socket,
    Other,
}

/// <summary>A file's identity independent of its names (device and inode), for same-file and loop checks.</summary>
internal readonly record struct FileIdentity(ulong Device, ulong Inode);

/// <summary>What statx tells about a file.</summary>
internal readonly record struct FileStatus(FileType Type, FileIdentity Identity, long AllocatedBytes);
