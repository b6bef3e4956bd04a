using System.IO.Compression;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Compression;

/// <summary>Compresses and decompresses whole clusters with the image's compression type.</summary>
public static class ClusterCompression
{
    /// <summary>
    /// Decompresses <paramref name="compressed"/> into exactly <paramref name="cluster"/>.Length bytes.
    /// </summary>
    /// <exception cref="InvalidDataException">The compressed data is damaged.</exception>
    /// <exception cref="NotSupportedException">An unknown compression type.</exception>
    public static void Decompress(CompressionType type, ReadOnlySpan<byte> compressed, Span<byte> cluster, long hostOffset)
    {
        var ok = type switch
        {
            CompressionType.Deflate => TryInflate(compressed, cluster),
            CompressionType.Zstd => Zstd.TryDecompress(compressed, cluster),
            _ => throw new NotSupportedException($"qcow2 compression type {(byte)type} is unknown."),
        };
        if (!ok)
        {
            throw Qcow2Corruption.Create("compressed cluster", $"{type} data of {compressed.Length} bytes does not decompress to a {cluster.Length}-byte cluster", hostOffset);
        }
    }

    /// <summary>
    /// Compresses one cluster; returns the compressed length, or −1 when the result would not be
    /// smaller than the cluster (QEMU then stores the cluster uncompressed).
    /// </summary>
    public static int Compress(CompressionType type, ReadOnlySpan<byte> cluster, Span<byte> destination)
    {
        var limit = Math.Min(destination.Length, cluster.Length - 1);
        return type switch
        {
            CompressionType.Deflate => Zlib.Compress(cluster, destination[..limit]),
            CompressionType.Zstd => Zstd.Compress(cluster, destination[..limit]),
            _ => throw new NotSupportedException($"qcow2 compression type {(byte)type} is unknown."),
        };
    }

    private static unsafe bool TryInflate(ReadOnlySpan<byte> compressed, Span<byte> cluster)
    {
        fixed (byte* input = compressed)
        {
            using var source = new UnmanagedMemoryStream(input, compressed.Length);
            using var inflater = new DeflateStream(source, CompressionMode.Decompress);
            var total = 0;
            try
            {
                while (total < cluster.Length)
                {
                    var read = inflater.Read(cluster[total..]);
                    if (read == 0)
                    {
                        return false;
                    }

                    total += read;
                }
            }
            catch (InvalidDataException)
            {
                return false;
            }

            return true;
        }
    }
}
