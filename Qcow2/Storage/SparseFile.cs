using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Hole detection with lseek(SEEK_DATA / SEEK_HOLE) on Linux, the way QEMU's file driver reports
/// block status. Elsewhere the whole file counts as data.
/// </summary>
internal static partial class SparseFile
{
    private const int SeekData = 3;
    private const int SeekHole = 4;
    private const int NoSuchDeviceOrAddress = 6; // ENXIO: offset is in a trailing hole

    public static bool TryGetDataExtent(SafeFileHandle handle, long offset, long length, out bool isData, out long extentEnd)
    {
        isData = true;
        extentEnd = length;
        if (!OperatingSystem.IsLinux() || offset >= length)
        {
            return false;
        }

        var success = false;
        handle.DangerousAddRef(ref success);
        try
        {
            var fd = (int)handle.DangerousGetHandle();
            var data = LSeek(fd, offset, SeekData);
            if (data < 0)
            {
                if (Marshal.GetLastPInvokeError() != NoSuchDeviceOrAddress)
                {
                    return false;
                }

                isData = false;
                extentEnd = length;
                return true;
            }

            if (data > offset)
            {
                isData = false;
                extentEnd = Math.Min(data, length);
                return true;
            }

            var hole = LSeek(fd, offset, SeekHole);
            if (hole < 0)
            {
                return false;
            }

            isData = true;
            extentEnd = Math.Min(hole, length);
            return true;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
        catch (DllNotFoundException)
        {
            return false;
        }
        finally
        {
            if (success)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>posix_fallocate: reserve blocks without writing them. False when unsupported.</summary>
    public static bool TryAllocate(SafeFileHandle handle, long offset, long length)
    {
        if (!OperatingSystem.IsLinux() || length <= 0)
        {
            return false;
        }

        var success = false;
        handle.DangerousAddRef(ref success);
        try
        {
            return PosixFallocate((int)handle.DangerousGetHandle(), offset, length) == 0;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
        catch (DllNotFoundException)
        {
            return false;
        }
        finally
        {
            if (success)
            {
                handle.DangerousRelease();
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "posix_fallocate")]
    private static partial int PosixFallocate(int fd, long offset, long length);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);
}
