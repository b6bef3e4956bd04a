using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// The platform seam for a file's sparseness: where its data and holes are (QEMU's block status),
/// reserving blocks, and giving freed blocks back (hole punching, QEMU's discard=unmap). One
/// implementation per OS: Linux (lseek SEEK_DATA/SEEK_HOLE, fallocate), macOS (the same lseek
/// whences with Darwin's values, fcntl F_PUNCHHOLE), Windows (FSCTL_QUERY_ALLOCATED_RANGES,
/// FSCTL_SET_SPARSE + FSCTL_SET_ZERO_DATA); elsewhere every byte is data and nothing is punched.
/// Only Linux runs in CI; see docs/portability.md.
/// </summary>
internal static class SparseFile
{
    private static readonly ISparseFiles Platform =
        OperatingSystem.IsLinux() ? new LinuxSparseFiles()
        : OperatingSystem.IsMacOS() ? new MacSparseFiles()
        : OperatingSystem.IsWindows() ? new WindowsSparseFiles()
        : new NoSparseFiles();

    /// <summary>The implementation in use ("linux", "macos", "windows" or "none").</summary>
    public static string PlatformName => Platform.Name;

    /// <summary>
    /// Whether <paramref name="offset"/> lies in data or a hole, and where that run ends (at most
    /// <paramref name="length"/>, the file's length). False when the platform cannot tell; then the
    /// whole file counts as data.
    /// </summary>
    public static bool TryGetDataExtent(SafeFileHandle handle, long offset, long length, out bool isData, out long extentEnd)
    {
        isData = true;
        extentEnd = length;
        if (offset >= length)
        {
            return false;
        }

        var result = Guarded(() => Platform.DataExtent(handle, offset, length));
        (isData, extentEnd) = result.Known ? (result.IsData, result.End) : (true, length);
        return result.Known;
    }

    /// <summary>Reserve blocks without writing them. False when unsupported (the caller just extends the file).</summary>
    public static bool TryAllocate(SafeFileHandle handle, long offset, long length) =>
        length > 0 && Guarded(() => (Platform.Allocate(handle, offset, length), false, 0L)).Known;

    /// <summary>
    /// Gives the blocks of a range back to the file system; the range reads as zeros and the length
    /// stays. False when unsupported, and then nothing changed.
    /// </summary>
    public static bool TryPunchHole(SafeFileHandle handle, long offset, long length) =>
        length > 0 && Guarded(() => (Platform.PunchHole(handle, offset, length), false, 0L)).Known;

    /// <summary>A missing system library or entry point means "unknown", never a crash.</summary>
    private static (bool Known, bool IsData, long End) Guarded(Func<(bool Known, bool IsData, long End)> call)
    {
        try
        {
            return call();
        }
        catch (Exception error) when (error is EntryPointNotFoundException or DllNotFoundException)
        {
            return default;
        }
    }

    /// <summary>Runs <paramref name="call"/> with the raw descriptor (or Windows handle), kept alive meanwhile.</summary>
    internal static T WithHandle<T>(SafeFileHandle handle, Func<nint, T> call)
    {
        var added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            return call(handle.DangerousGetHandle());
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }
}

/// <summary>One OS's sparse-file calls.</summary>
internal interface ISparseFiles
{
    string Name { get; }

    (bool Known, bool IsData, long End) DataExtent(SafeFileHandle handle, long offset, long length);

    bool Allocate(SafeFileHandle handle, long offset, long length);

    bool PunchHole(SafeFileHandle handle, long offset, long length);
}

/// <summary>A platform with none of these calls: every byte is data, nothing is reserved or punched.</summary>
internal sealed class NoSparseFiles : ISparseFiles
{
    public string Name => "none";

    public (bool Known, bool IsData, long End) DataExtent(SafeFileHandle handle, long offset, long length) => default;

    public bool Allocate(SafeFileHandle handle, long offset, long length) => false;

    public bool PunchHole(SafeFileHandle handle, long offset, long length) => false;
}

/// <summary>lseek(SEEK_DATA/SEEK_HOLE) as both Linux and Darwin have it, with each one's whence values.</summary>
internal abstract partial class PosixSparseFiles(int seekData, int seekHole) : ISparseFiles
{
    private const int NoSuchDeviceOrAddress = 6; // ENXIO on both: the offset is in a trailing hole

    public abstract string Name { get; }

    public (bool Known, bool IsData, long End) DataExtent(SafeFileHandle handle, long offset, long length) =>
        SparseFile.WithHandle(handle, raw =>
        {
            var fd = (int)raw;
            var data = LSeek(fd, offset, seekData);
            if (data < 0)
            {
                return Marshal.GetLastPInvokeError() == NoSuchDeviceOrAddress ? (true, false, length) : (false, true, length);
            }

            if (data > offset)
            {
                return (true, false, Math.Min(data, length));
            }

            var hole = LSeek(fd, offset, seekHole);
            return hole < 0 ? (false, true, length) : (true, true, Math.Min(hole, length));
        });

    public abstract bool Allocate(SafeFileHandle handle, long offset, long length);

    public abstract bool PunchHole(SafeFileHandle handle, long offset, long length);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);
}

/// <summary>Linux: SEEK_DATA 3, SEEK_HOLE 4; posix_fallocate; fallocate(PUNCH_HOLE | KEEP_SIZE).</summary>
internal sealed partial class LinuxSparseFiles() : PosixSparseFiles(seekData: 3, seekHole: 4)
{
    private const int PunchHoleKeepSize = 0x03; // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

    public override string Name => "linux";

    public override bool Allocate(SafeFileHandle handle, long offset, long length) =>
        SparseFile.WithHandle(handle, fd => PosixFallocate((int)fd, offset, length) == 0);

    public override bool PunchHole(SafeFileHandle handle, long offset, long length) =>
        SparseFile.WithHandle(handle, fd => Fallocate((int)fd, PunchHoleKeepSize, offset, length) == 0);

    [LibraryImport("libc", EntryPoint = "posix_fallocate")]
    private static partial int PosixFallocate(int fd, long offset, long length);

    [LibraryImport("libc", EntryPoint = "fallocate")]
    private static partial int Fallocate(int fd, int mode, long offset, long length);
}

/// <summary>
/// macOS: SEEK_HOLE 3, SEEK_DATA 4 (the reverse of Linux, sys/unistd.h); fcntl(F_PUNCHHOLE) with
/// struct fpunchhole, which APFS accepts only on block-aligned ranges (a refusal changes nothing).
/// No reservation: F_PREALLOCATE reserves at the end only, which extending the file already does.
/// </summary>
internal sealed partial class MacSparseFiles() : PosixSparseFiles(seekData: 4, seekHole: 3)
{
    private const int PunchHoleCommand = 99; // F_PUNCHHOLE, sys/fcntl.h

    public override string Name => "macos";

    public override bool Allocate(SafeFileHandle handle, long offset, long length) => false;

    public override unsafe bool PunchHole(SafeFileHandle handle, long offset, long length) =>
        SparseFile.WithHandle(handle, fd =>
        {
            var request = new PunchRequest { Offset = offset, Length = length };
            return (RuntimeInformation.ProcessArchitecture == Architecture.Arm64
                ? FcntlVariadicOnStack((int)fd, PunchHoleCommand, 0, 0, 0, 0, 0, 0, &request)
                : FcntlPunch((int)fd, PunchHoleCommand, &request)) == 0;
        });

    /// <summary>fcntl is variadic: on x64 its third argument travels like a named one.</summary>
    [LibraryImport("libc", EntryPoint = "fcntl")]
    private static unsafe partial int FcntlPunch(int fd, int command, PunchRequest* request);

    /// <summary>
    /// Apple's arm64 ABI passes every variadic argument on the stack, where a plain P/Invoke never puts
    /// it (fcntl would read a stray pointer): six padding arguments fill x2–x7 so the request lands there.
    /// </summary>
    [LibraryImport("libc", EntryPoint = "fcntl")]
    private static unsafe partial int FcntlVariadicOnStack(int fd, int command, nint pad2, nint pad3, nint pad4, nint pad5, nint pad6, nint pad7, PunchRequest* request);

    /// <summary>struct fpunchhole: fp_flags, reserved, fp_offset, fp_length.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct PunchRequest
    {
        public uint Flags;
        public uint Reserved;
        public long Offset;
        public long Length;
    }
}

/// <summary>
/// Windows (NTFS, ReFS): allocated ranges from FSCTL_QUERY_ALLOCATED_RANGES; punching marks the file
/// sparse (FSCTL_SET_SPARSE) and deallocates with FSCTL_SET_ZERO_DATA. No reservation call. Our
/// handles are opened for overlapped I/O, so each control call carries an OVERLAPPED with its own
/// event and is waited for.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("windows")]
internal sealed partial class WindowsSparseFiles : ISparseFiles
{
    private const uint SetSparse = 0x000900C4;
    private const uint SetZeroData = 0x000980C8;
    private const uint QueryAllocatedRanges = 0x000940CF;
    private const int MoreData = 234; // ERROR_MORE_DATA: the output holds the first ranges

    public string Name => "windows";

    public unsafe (bool Known, bool IsData, long End) DataExtent(SafeFileHandle handle, long offset, long length) =>
        SparseFile.WithHandle(handle, raw =>
        {
            var query = new Range { Offset = offset, Length = length - offset };
            Range first;
            if (!Control(raw, QueryAllocatedRanges, &query, sizeof(Range), &first, sizeof(Range), out var returned, out var error) && error != MoreData)
            {
                return (false, true, length);
            }

            if (returned < sizeof(Range))
            {
                return (true, false, length); // no allocated range from offset on
            }

            return first.Offset > offset
                ? (true, false, Math.Min(first.Offset, length))
                : (true, true, Math.Min(first.Offset + first.Length, length));
        });

    public bool Allocate(SafeFileHandle handle, long offset, long length) => false;

    public unsafe bool PunchHole(SafeFileHandle handle, long offset, long length) =>
        SparseFile.WithHandle(handle, raw =>
        {
            byte sparse = 1; // FILE_SET_SPARSE_BUFFER.SetSparse
            if (!Control(raw, SetSparse, &sparse, 1, null, 0, out _, out _))
            {
                return false;
            }

            var zero = new Range { Offset = offset, Length = offset + length }; // FileOffset, BeyondFinalZero
            return Control(raw, SetZeroData, &zero, sizeof(Range), null, 0, out _, out _);
        });

    /// <summary>DeviceIoControl on an overlapped handle, waited for; the Win32 error when it fails.</summary>
    private static unsafe bool Control(nint device, uint code, void* input, int inputSize, void* output, int outputSize, out int returned, out int error)
    {
        const int IoPending = 997; // ERROR_IO_PENDING
        var done = CreateEvent(0, manualReset: true, initialState: false, 0);
        if (done == 0)
        {
            (returned, error) = (0, Marshal.GetLastPInvokeError());
            return false;
        }

        try
        {
            // The handle belongs to the thread pool's completion port (it is opened for async I/O); an event
            // handle with its low bit set keeps this completion off that port, which would otherwise get a
            // packet pointing at this stack frame's OVERLAPPED after it is gone.
            var overlapped = new NativeOverlapped { EventHandle = done | 1 };
            var ok = DeviceIoControl(device, code, input, inputSize, output, outputSize, out returned, &overlapped);
            error = ok ? 0 : Marshal.GetLastPInvokeError();
            if (!ok && error == IoPending)
            {
                ok = GetOverlappedResult(device, &overlapped, out returned, wait: true);
                error = ok ? 0 : Marshal.GetLastPInvokeError();
            }

            return ok;
        }
        finally
        {
            CloseHandle(done);
        }
    }

    [LibraryImport("kernel32.dll", SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static unsafe partial bool DeviceIoControl(nint device, uint code, void* input, int inputSize, void* output, int outputSize, out int returned, NativeOverlapped* overlapped);

    [LibraryImport("kernel32.dll", SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static unsafe partial bool GetOverlappedResult(nint file, NativeOverlapped* overlapped, out int transferred, [MarshalAs(UnmanagedType.Bool)] bool wait);

    [LibraryImport("kernel32.dll", EntryPoint = "CreateEventW", SetLastError = true)]
    private static partial nint CreateEvent(nint attributes, [MarshalAs(UnmanagedType.Bool)] bool manualReset, [MarshalAs(UnmanagedType.Bool)] bool initialState, nint name);

    [LibraryImport("kernel32.dll")]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool CloseHandle(nint handle);

    /// <summary>FILE_ALLOCATED_RANGE_BUFFER and FILE_ZERO_DATA_INFORMATION: two 64-bit integers.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Range
    {
        public long Offset;
        public long Length;
    }
}
