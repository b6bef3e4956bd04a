using System.Runtime.InteropServices;
using ZstdSharp.Unsafe;

namespace QcowDedup.Qcow2.Compression;

/// <summary>
/// Zstandard through the system libzstd where it is installed, else through ZstdSharp (a managed
/// port of the same library), so zstd images work on every platform .NET runs on. Setting the
/// environment variable QCOWDEDUP_ZSTD=managed skips the system library (read once per process).
/// Decompression streams, as QEMU does: the compressed range of a cluster is only known to the
/// sector, so it may hold bytes of the next cluster, and the output must be exactly one cluster.
/// </summary>
internal static unsafe class Zstd
{
    private const int DefaultLevel = 3;

    /// <summary>The system library's functions, or null when it is absent or hidden (then ZstdSharp serves).</summary>
    private static readonly Lazy<Api?> Native = new(() => LoadApi(Environment.GetEnvironmentVariable("QCOWDEDUP_ZSTD")));

    [ThreadStatic]
    private static nint _decompressionContext;

    [ThreadStatic]
    private static ZSTD_DCtx_s* _managedContext;

    /// <summary>"system libzstd" or "managed (ZstdSharp)": which implementation this process uses.</summary>
    public static string Implementation => Native.Value is null ? "managed (ZstdSharp)" : "system libzstd";

    /// <summary>Whether the system library is in use (false: ZstdSharp).</summary>
    internal static bool UsesSystemLibrary => Native.Value is not null;

    /// <summary>Compresses into one frame; returns the length, or −1 when it does not fit.</summary>
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination) => Compress(source, destination, managed: false);

    /// <summary>As <see cref="Compress(ReadOnlySpan{byte}, Span{byte})"/>; <paramref name="managed"/> forces ZstdSharp (tests compare the two).</summary>
    internal static int Compress(ReadOnlySpan<byte> source, Span<byte> destination, bool managed)
    {
        var api = managed ? null : Native.Value;
        fixed (byte* input = source)
        fixed (byte* output = destination)
        {
            if (api is null)
            {
                var packed = Methods.ZSTD_compress(output, (nuint)destination.Length, input, (nuint)source.Length, DefaultLevel);
                return Methods.ZSTD_isError(packed) ? -1 : (int)packed;
            }

            var result = api.Compress(output, (nuint)destination.Length, input, (nuint)source.Length, DefaultLevel);
            return api.IsError(result) != 0 ? -1 : (int)result;
        }
    }

    /// <summary>
    /// Decompresses until <paramref name="destination"/> is full. Returns false when the data is
    /// damaged, ends early, or decodes to more than one cluster.
    /// </summary>
    public static bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination) => TryDecompress(source, destination, managed: false);

    /// <summary>As <see cref="TryDecompress(ReadOnlySpan{byte}, Span{byte})"/>; <paramref name="managed"/> forces ZstdSharp.</summary>
    internal static bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination, bool managed)
    {
        var api = managed ? null : Native.Value;
        var context = api is null ? 0 : NativeContext(api);
        var managedContext = api is null ? ManagedContext() : null;
        fixed (byte* input = source)
        fixed (byte* output = destination)
        {
            var inBuffer = new Buffer { Data = input, Size = (nuint)source.Length };
            var outBuffer = new Buffer { Data = output, Size = (nuint)destination.Length };
            nuint result = 0;
            while (outBuffer.Position < outBuffer.Size)
            {
                var lastIn = inBuffer.Position;
                var lastOut = outBuffer.Position;

                // ZstdSharp's buffers are the C structs, field for field.
                result = api is null
                    ? Methods.ZSTD_decompressStream(managedContext, (ZSTD_outBuffer_s*)&outBuffer, (ZSTD_inBuffer_s*)&inBuffer)
                    : api.DecompressStream(context, &outBuffer, &inBuffer);
                if (api is null ? Methods.ZSTD_isError(result) : api.IsError(result) != 0)
                {
                    return false;
                }

                if (inBuffer.Position <= lastIn && outBuffer.Position <= lastOut)
                {
                    return false; // no progress: the input ended before a whole cluster
                }
            }

            return result == 0;
        }
    }

    /// <summary>This thread's libzstd decompression context, reset for a new frame.</summary>
    private static nint NativeContext(Api api)
    {
        var context = _decompressionContext;
        if (context == 0)
        {
            context = api.CreateDecompressionContext();
            if (context == 0)
            {
                throw new InvalidOperationException("libzstd could not create a decompression context.");
            }

            _decompressionContext = context;
        }

        api.ResetContext(context, 1); // ZSTD_reset_session_only
        return context;
    }

    /// <summary>This thread's ZstdSharp decompression context, reset for a new frame.</summary>
    private static ZSTD_DCtx_s* ManagedContext()
    {
        var context = _managedContext;
        if (context is null)
        {
            context = Methods.ZSTD_createDCtx();
            if (context is null)
            {
                throw new InvalidOperationException("ZstdSharp could not create a decompression context.");
            }

            _managedContext = context;
        }

        Methods.ZSTD_DCtx_reset(context, ZSTD_ResetDirective.ZSTD_reset_session_only);
        return context;
    }

    /// <summary>The system library, unless <paramref name="choice"/> is "managed" or it cannot be loaded.</summary>
    private static Api? LoadApi(string? choice)
    {
        if (string.Equals(choice, "managed", StringComparison.OrdinalIgnoreCase) ||
            !NativeLibraryLoader.TryLoad(out var library, "libzstd.so.1", "libzstd.so", "libzstd.1.dylib", "libzstd.dylib", "libzstd.dll", "zstd"))
        {
            return null;
        }

        return new Api(
            (delegate* unmanaged<byte*, nuint, byte*, nuint, int, nuint>)NativeLibraryLoader.Export(library, "ZSTD_compress"),
            (delegate* unmanaged<nint>)NativeLibraryLoader.Export(library, "ZSTD_createDCtx"),
            (delegate* unmanaged<nint, int, nuint>)NativeLibraryLoader.Export(library, "ZSTD_DCtx_reset"),
            (delegate* unmanaged<nint, Buffer*, Buffer*, nuint>)NativeLibraryLoader.Export(library, "ZSTD_decompressStream"),
            (delegate* unmanaged<nuint, uint>)NativeLibraryLoader.Export(library, "ZSTD_isError"));
    }

    private sealed class Api(
        delegate* unmanaged<byte*, nuint, byte*, nuint, int, nuint> compress,
        delegate* unmanaged<nint> createDecompressionContext,
        delegate* unmanaged<nint, int, nuint> resetContext,
        delegate* unmanaged<nint, Buffer*, Buffer*, nuint> decompressStream,
        delegate* unmanaged<nuint, uint> isError)
    {
        public readonly delegate* unmanaged<byte*, nuint, byte*, nuint, int, nuint> Compress = compress;
        public readonly delegate* unmanaged<nint> CreateDecompressionContext = createDecompressionContext;
        public readonly delegate* unmanaged<nint, int, nuint> ResetContext = resetContext;
        public readonly delegate* unmanaged<nint, Buffer*, Buffer*, nuint> DecompressStream = decompressStream;
        public readonly delegate* unmanaged<nuint, uint> IsError = isError;
    }

    /// <summary>ZSTD_inBuffer and ZSTD_outBuffer share this layout.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Buffer
    {
        public byte* Data;
        public nuint Size;
        public nuint Position;
    }
}
