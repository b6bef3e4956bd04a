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
    private const int PunchHoleKeepSize = 0x03; // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

    public static bool TryGetDataExtent(SafeFileHandle handle, long offset, long length, out bool isData, out long extentEnd)
    {
        isData = true;
        extentEnd = length;
        if (!OperatingSystem.IsLinux() || offset >= length)
        {
            return false;
        }

        var result = WithDescriptor(handle, fd =>
        {
            var data = LSeek(fd, offset, SeekData);
            if (data < 0)
            {
                // ENXIO: the offset lies in a hole that runs to the end of the file.
                return Marshal.GetLastPInvokeError() == NoSuchDeviceOrAddress ? (true, false, length) : (false, true, length);
            }

            if (data > offset)
            {
                return (true, false, Math.Min(data, length));
            }

            var hole = LSeek(fd, offset, SeekHole);
            return hole < 0 ? (false, true, length) : (true, true, Math.Min(hole, length));
        });
        (isData, extentEnd) = (result.Known ? result.IsData : true, result.Known ? result.End : length);
        return result.Known;
    }

    /// <summary>posix_fallocate: reserve blocks without writing them. False when unsupported.</summary>
    public static bool TryAllocate(SafeFileHandle handle, long offset, long length) =>
        OperatingSystem.IsLinux() && length > 0 && WithDescriptor(handle, fd => (PosixFallocate(fd, offset, length) == 0, false, 0L)).Known;

    /// <summary>
    /// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): gives the blocks of a range back to the
    /// file system; the range reads as zeros and the length stays. False when unsupported.
    /// </summary>
    public static bool TryPunchHole(SafeFileHandle handle, long offset, long length) =>
        OperatingSystem.IsLinux() && length > 0 && WithDescriptor(handle, fd => (Fallocate(fd, PunchHoleKeepSize, offset, length) == 0, false, 0L)).Known;

    /// <summary>Runs <paramref name="call"/> with the raw descriptor, kept alive; missing libc means "unknown".</summary>
    private static (bool Known, bool IsData, long End) WithDescriptor(SafeFileHandle handle, Func<int, (bool Known, bool IsData, long End)> call)
    {
        var added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            return call((int)handle.DangerousGetHandle());
        }
        catch (Exception error) when (error is EntryPointNotFoundException or DllNotFoundException)
        {
            return default;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "posix_fallocate")]
    private static partial int PosixFallocate(int fd, long offset, long length);

    [LibraryImport("libc", EntryPoint = "fallocate")]
    private static partial int Fallocate(int fd, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);
}
