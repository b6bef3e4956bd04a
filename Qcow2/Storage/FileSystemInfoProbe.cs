using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Storage;

/// <summary>Disk space a file really occupies (st_blocks × 512), as qemu-img reports "actual-size".</summary>
internal static unsafe partial class FileSystemInfoProbe
{
    private const int AtFdCwd = -100;
    private const uint StatxBlocks = 0x400;
    private const int StatxBlocksOffset = 48; // struct statx: mask, blksize, attributes, nlink, uid, gid, mode+pad, ino, size, then blocks

    /// <summary>Allocated bytes of the storage's file, or its length when that cannot be learned.</summary>
    public static long AllocatedBytes(IStorage storage)
    {
        if (storage.Path is { } path && OperatingSystem.IsLinux())
        {
            try
            {
                var buffer = stackalloc byte[256];
                if (Statx(AtFdCwd, path, 0, StatxBlocks, buffer) == 0)
                {
                    return *(long*)(buffer + StatxBlocksOffset) * 512;
                }
            }
            catch (EntryPointNotFoundException)
            {
            }
            catch (DllNotFoundException)
            {
            }
        }

        return storage.Length;
    }

    [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int directoryFd, string path, int flags, uint mask, byte* buffer);
}
