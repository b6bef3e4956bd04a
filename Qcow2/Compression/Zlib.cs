using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Compression;

/// <summary>
/// Raw deflate compression through the system zlib. QEMU inflates compressed clusters with a
/// 4 KiB window (windowBits −12, block/qcow2-threads.c), so data must be deflated with a window no
/// larger than that — which <see cref="System.IO.Compression.DeflateStream"/> cannot be told.
/// </summary>
internal static unsafe class Zlib
{
    private const int WindowBits = -12;
    private const int MemoryLevel = 9;
    private const int DefaultCompression = -1;
    private const int Deflated = 8;
    private const int DefaultStrategy = 0;
    private const int Finish = 4;
    private const int StreamEnd = 1;
    private const int Ok = 0;

    private static readonly Lazy<Api> Functions = new(LoadApi);

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
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var api = Functions.Value;
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

    private static Api LoadApi()
    {
        var library = NativeLibraryLoader.Load("Writing deflate-compressed qcow2 clusters", "Debian package zlib1g", "libz.so.1", "libz.so", "libz.dylib", "zlib1.dll", "z");
        return new Api(
            (delegate* unmanaged<ZStream*, int, int, int, int, int, byte*, int, int>)NativeLibraryLoader.Export(library, "deflateInit2_"),
            (delegate* unmanaged<ZStream*, int, int>)NativeLibraryLoader.Export(library, "deflate"),
            (delegate* unmanaged<ZStream*, int>)NativeLibraryLoader.Export(library, "deflateEnd"),
            (delegate* unmanaged<ZStream*, int>)NativeLibraryLoader.Export(library, "deflateReset"));
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
