using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Compression;

/// <summary>
/// Raw deflate compression through the system zlib, else through the zlib that .NET itself ships in
/// its native shim (System.IO.Compression.Native: Windows has no system zlib). QEMU inflates
/// compressed clusters with a 4 KiB window (windowBits −12, block/qcow2-threads.c), so data must be
/// deflated with a window no larger than that — which <see cref="System.IO.Compression.DeflateStream"/>
/// cannot be told, but both libraries' deflateInit2 can. QCOWDEDUP_ZLIB=runtime skips the system
/// zlib (read once per process).
/// </summary>
internal static unsafe partial class Zlib
{
    private const int WindowBits = -12;
    private const int MemoryLevel = 9;
    private const int DefaultCompression = -1;
    private const int Deflated = 8;
    private const int DefaultStrategy = 0;
    private const int Finish = 4;
    private const int StreamEnd = 1;
    private const int Ok = 0;

    private static readonly Lazy<Api?> Functions = new(() => LoadApi(Environment.GetEnvironmentVariable("QCOWDEDUP_ZLIB")));

    private static readonly Lazy<RuntimeApi> Runtime = new(LoadRuntimeApi);

    /// <summary>
    /// Deflate states kept for reuse (a reset costs nothing; an init allocates and clears ~270 KiB,
    /// which with a state per cluster made the kernel's page faults a tenth of a compressed convert).
    /// Each lives at a fixed native address, as zlib's state points back at its stream.
    /// </summary>
    private static readonly ConcurrentBag<IntPtr> IdleStreams = [];

    /// <summary>
    /// Compresses <paramref name="source"/> into <paramref name="destination"/>; returns the
    /// compressed length, or −1 when it does not fit. The output is what a fresh deflate state gives.
    /// </summary>
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination) => Compress(source, destination, runtime: false);

    /// <summary>Whether the system zlib is in use (false: the runtime's).</summary>
    internal static bool UsesSystemLibrary => Functions.Value is not null;

    /// <summary>As <see cref="Compress(ReadOnlySpan{byte}, Span{byte})"/>; <paramref name="runtime"/> forces the runtime's zlib (tests compare the two).</summary>
    internal static int Compress(ReadOnlySpan<byte> source, Span<byte> destination, bool runtime)
    {
        if ((runtime ? null : Functions.Value) is not { } api)
        {
            return CompressWithRuntime(Runtime.Value, source, destination);
        }

        var stream = RentStream(api);
        try
        {
            fixed (byte* input = source)
            fixed (byte* output = destination)
            {
                stream->NextIn = input;
                stream->AvailableIn = (uint)source.Length;
                stream->NextOut = output;
                stream->AvailableOut = (uint)destination.Length;
                var result = api.Deflate(stream, Finish);
                return result == StreamEnd ? destination.Length - (int)stream->AvailableOut : -1;
            }
        }
        finally
        {
            ReturnStream(api, stream);
        }
    }

    /// <summary>"system zlib" or "the .NET runtime's zlib": which implementation this process uses.</summary>
    public static string Implementation => Functions.Value is null ? "the .NET runtime's zlib" : "system zlib";

    /// <summary>
    /// One cluster through the runtime's shim. It has no deflateReset, so each cluster gets a fresh
    /// state (slower than the pooled states of the system zlib; it is the fallback).
    /// </summary>
    private static int CompressWithRuntime(RuntimeApi api, ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var stream = default(PalZStream);
        var init = api.DeflateInit2(&stream, DefaultCompression, Deflated, WindowBits, MemoryLevel, DefaultStrategy);
        if (init != Ok)
        {
            throw new InvalidOperationException($"The .NET runtime's zlib failed to start deflate (code {init}).");
        }

        try
        {
            fixed (byte* input = source)
            fixed (byte* output = destination)
            {
                stream.NextIn = input;
                stream.AvailableIn = (uint)source.Length;
                stream.NextOut = output;
                stream.AvailableOut = (uint)destination.Length;
                var result = api.Deflate(&stream, Finish);
                return result == StreamEnd ? destination.Length - (int)stream.AvailableOut : -1;
            }
        }
        finally
        {
            api.DeflateEnd(&stream);
        }
    }

    /// <summary>An idle deflate state, reset, or a new one.</summary>
    private static ZStream* RentStream(Api api)
    {
        while (IdleStreams.TryTake(out var idle))
        {
            var reused = (ZStream*)idle;
            if (api.DeflateReset(reused) == Ok)
            {
                return reused;
            }

            Release(api, reused); // cannot happen with a state deflate left intact; never reuse a doubtful one
        }

        var stream = (ZStream*)NativeMemory.AllocZeroed((nuint)sizeof(ZStream));
        var version = "1.2.11"u8;
        fixed (byte* versionPointer = version)
        {
            var init = api.DeflateInit2(stream, DefaultCompression, Deflated, WindowBits, MemoryLevel, DefaultStrategy, versionPointer, sizeof(ZStream));
            if (init != Ok)
            {
                NativeMemory.Free(stream);
                throw new InvalidOperationException($"zlib deflateInit2 failed with code {init}.");
            }
        }

        return stream;
    }

    /// <summary>Keeps a state for the next cluster, up to two per core; frees the rest.</summary>
    private static void ReturnStream(Api api, ZStream* stream)
    {
        if (IdleStreams.Count < 2 * Environment.ProcessorCount)
        {
            IdleStreams.Add((IntPtr)stream);
        }
        else
        {
            Release(api, stream);
        }
    }

    private static void Release(Api api, ZStream* stream)
    {
        api.DeflateEnd(stream);
        NativeMemory.Free(stream);
    }

    /// <summary>The system zlib, unless <paramref name="choice"/> is "runtime" or it cannot be loaded.</summary>
    private static Api? LoadApi(string? choice)
    {
        if (string.Equals(choice, "runtime", StringComparison.OrdinalIgnoreCase) ||
            !NativeLibraryLoader.TryLoad(out var library, "libz.so.1", "libz.so", "libz.1.dylib", "libz.dylib", "zlib1.dll", "z"))
        {
            return null;
        }

        return new Api(
            (delegate* unmanaged<ZStream*, int, int, int, int, int, byte*, int, int>)NativeLibraryLoader.Export(library, "deflateInit2_"),
            (delegate* unmanaged<ZStream*, int, int>)NativeLibraryLoader.Export(library, "deflate"),
            (delegate* unmanaged<ZStream*, int>)NativeLibraryLoader.Export(library, "deflateEnd"),
            (delegate* unmanaged<ZStream*, int>)NativeLibraryLoader.Export(library, "deflateReset"));
    }

    /// <summary>
    /// The deflate functions of System.IO.Compression.Native: loaded from the runtime's directory, or,
    /// in a native (ahead-of-time) build where the shim is linked into the program, called directly.
    /// </summary>
    private static RuntimeApi LoadRuntimeApi()
    {
        var directory = System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory();
        string[] names = [
            Path.Combine(directory, "libSystem.IO.Compression.Native.so"),
            Path.Combine(directory, "libSystem.IO.Compression.Native.dylib"),
            Path.Combine(directory, "System.IO.Compression.Native.dll")];
        if (NativeLibraryLoader.TryLoad(out var library, names))
        {
            return new RuntimeApi(
                NativeLibraryLoader.Export(library, "CompressionNative_DeflateInit2_"),
                NativeLibraryLoader.Export(library, "CompressionNative_Deflate"),
                NativeLibraryLoader.Export(library, "CompressionNative_DeflateEnd"));
        }

        try
        {
            var probe = default(PalZStream);
            if (LinkedShim.DeflateInit2(&probe, DefaultCompression, Deflated, WindowBits, MemoryLevel, DefaultStrategy) == Ok)
            {
                _ = LinkedShim.DeflateEnd(&probe);
                return new RuntimeApi(0, 0, 0);
            }
        }
        catch (Exception error) when (error is DllNotFoundException or EntryPointNotFoundException)
        {
            // Neither beside the runtime nor linked in.
        }

        throw new NotSupportedException(
            "Writing deflate-compressed qcow2 clusters needs zlib: neither the system zlib (Debian package zlib1g) nor the .NET runtime's System.IO.Compression.Native could be loaded.");
    }

    /// <summary>The shim's functions: through pointers when loaded at run time, else direct calls (all zero).</summary>
    private sealed class RuntimeApi(nint deflateInit2, nint deflate, nint deflateEnd)
    {
        public int DeflateInit2(PalZStream* stream, int level, int method, int windowBits, int memoryLevel, int strategy) =>
            deflateInit2 == 0
                ? LinkedShim.DeflateInit2(stream, level, method, windowBits, memoryLevel, strategy)
                : ((delegate* unmanaged<PalZStream*, int, int, int, int, int, int>)deflateInit2)(stream, level, method, windowBits, memoryLevel, strategy);

        public int Deflate(PalZStream* stream, int flush) =>
            deflate == 0 ? LinkedShim.Deflate(stream, flush) : ((delegate* unmanaged<PalZStream*, int, int>)deflate)(stream, flush);

        public int DeflateEnd(PalZStream* stream) =>
            deflateEnd == 0 ? LinkedShim.DeflateEnd(stream) : ((delegate* unmanaged<PalZStream*, int>)deflateEnd)(stream);
    }

    /// <summary>Direct calls into the shim; a native build links them (the SDK lists the shim for direct P/Invoke).</summary>
    private static partial class LinkedShim
    {
        private const string Library = "libSystem.IO.Compression.Native";

        [LibraryImport(Library, EntryPoint = "CompressionNative_DeflateInit2_")]
        public static partial int DeflateInit2(PalZStream* stream, int level, int method, int windowBits, int memoryLevel, int strategy);

        [LibraryImport(Library, EntryPoint = "CompressionNative_Deflate")]
        public static partial int Deflate(PalZStream* stream, int flush);

        [LibraryImport(Library, EntryPoint = "CompressionNative_DeflateEnd")]
        public static partial int DeflateEnd(PalZStream* stream);
    }

    /// <summary>The shim's PAL_ZStream (pal_zlib.h): its own layout, not zlib's z_stream.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct PalZStream
    {
        public byte* NextIn;
        public byte* NextOut;
        public nint Message;
        public nint InternalState;
        public uint AvailableIn;
        public uint AvailableOut;
    }

    private sealed class Api(
        delegate* unmanaged<ZStream*, int, int, int, int, int, byte*, int, int> deflateInit2,
        delegate* unmanaged<ZStream*, int, int> deflate,
        delegate* unmanaged<ZStream*, int> deflateEnd,
        delegate* unmanaged<ZStream*, int> deflateReset)
    {
        public readonly delegate* unmanaged<ZStream*, int, int, int, int, int, byte*, int, int> DeflateInit2 = deflateInit2;
        public readonly delegate* unmanaged<ZStream*, int, int> Deflate = deflate;
        public readonly delegate* unmanaged<ZStream*, int> DeflateEnd = deflateEnd;
        public readonly delegate* unmanaged<ZStream*, int> DeflateReset = deflateReset;
    }

    /// <summary>zlib's z_stream; C "unsigned long" is <see cref="CULong"/> so the layout holds on every ABI.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct ZStream
    {
        public byte* NextIn;
        public uint AvailableIn;
        public CULong TotalIn;
        public byte* NextOut;
        public uint AvailableOut;
        public CULong TotalOut;
        public nint Message;
        public nint State;
        public nint Alloc;
        public nint Free;
        public nint Opaque;
        public int DataType;
        public CULong Adler;
        public CULong Reserved;
    }
}
