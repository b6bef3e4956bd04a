using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Compression;

/// <summary>
/// Zstandard through the system libzstd. Decompression streams, as QEMU does: the compressed
/// range of a cluster is only known to the sector, so it may hold bytes of the next cluster, and
/// the output must be exactly one cluster.
/// </summary>
internal static unsafe class Zstd
{
    private const int DefaultLevel = 3;

    private static readonly Lazy<Api> Functions = new(LoadApi);

    [ThreadStatic]
    private static nint _decompressionContext;

    /// <summary>Whether the system library can be loaded.</summary>
    public static bool IsAvailable
    {
        get
        {
            try
            {
                _ = Functions.Value;
                return true;
            }
            catch (NotSupportedException)
            {
                return false;
            }
        }
    }

    /// <summary>Compresses into one frame; returns the length, or −1 when it does not fit.</summary>
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var api = Functions.Value;
        fixed (byte* input = source)
        fixed (byte* output = destination)
        {
            var result = api.Compress(output, (nuint)destination.Length, input, (nuint)source.Length, DefaultLevel);
            return api.IsError(result) != 0 ? -1 : (int)result;
        }
    }

    /// <summary>
    /// Decompresses until <paramref name="destination"/> is full. Returns false when the data is
    /// damaged, ends early, or decodes to more than one cluster.
    /// </summary>
    public static bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var api = Functions.Value;
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
                result = api.DecompressStream(context, &outBuffer, &inBuffer);
                if (api.IsError(result) != 0)
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

    private static Api LoadApi()
    {
        var library = NativeLibraryLoader.Load("Reading or writing zstd-compressed qcow2 clusters", "Debian package libzstd1", "libzstd.so.1", "libzstd.so", "libzstd.dylib", "libzstd.1.dylib", "libzstd.dll", "zstd");
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
