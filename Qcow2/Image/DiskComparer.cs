using System.Buffers;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>Compares the guest contents of two disks, as <c>qemu-img compare</c> does.</summary>
public static class DiskComparer
{
    private const int ChunkSize = 1 << 20;

    /// <summary>
    /// The first guest offset at which the two disks read differently, or null when they read the
    /// same. A shorter disk compares as if padded with zeros to the longer one's size.
    /// </summary>
    public static long? FindFirstDifference(DiskSource first, DiskSource second, IProgress<double>? progress = null) =>
        SyncOver.Run(FindCoreAsync(first, second, progress, async: false, CancellationToken.None));

    /// <inheritdoc cref="FindFirstDifference"/>
    public static ValueTask<long?> FindFirstDifferenceAsync(DiskSource first, DiskSource second, IProgress<double>? progress = null, CancellationToken cancellationToken = default) =>
        FindCoreAsync(first, second, progress, async: true, cancellationToken);

    private static async ValueTask<long?> FindCoreAsync(DiskSource first, DiskSource second, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(first);
        ArgumentNullException.ThrowIfNull(second);
        var size = Math.Max(first.Size, second.Size);
        var a = ArrayPool<byte>.Shared.Rent(ChunkSize);
        var b = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            for (long position = 0; position < size; position += ChunkSize)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var length = (int)Math.Min(ChunkSize, size - position);
                await first.ReadAsync(position, a.AsMemory(0, length), async, cancellationToken).ConfigureAwait(false);
                await second.ReadAsync(position, b.AsMemory(0, length), async, cancellationToken).ConfigureAwait(false);
                var same = a.AsSpan(0, length).CommonPrefixLength(b.AsSpan(0, length));
                if (same < length)
                {
                    return position + same;
                }

                progress?.Report((double)(position + length) / size);
            }

            return null;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(a);
            ArrayPool<byte>.Shared.Return(b);
        }
    }
}
