using System.Buffers;
using QcowDedup.Qcow2.Compression;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>Reads guest bytes [offset, offset + buffer.Length), which must lie inside the disk.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range extends past <see cref="Size"/>.</exception>
    /// <exception cref="InvalidDataException">Metadata on the way is corrupt.</exception>
    public void Read(long offset, Span<byte> buffer)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, buffer.Length);
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            var memory = rented.AsMemory(0, buffer.Length);
            SyncOver.Run(ReadCoreAsync(offset, memory, async: false, CancellationToken.None));
            memory.Span.CopyTo(buffer);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Reads guest bytes [offset, offset + buffer.Length), which must lie inside the disk.</summary>
    public void Read(long offset, byte[] buffer, int index, int count)
    {
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(buffer);
        ThrowIfOutOfRange(offset, count);
        SyncOver.Run(ReadCoreAsync(offset, buffer.AsMemory(index, count), async: false, CancellationToken.None));
    }

    /// <summary>Reads guest bytes [offset, offset + buffer.Length), which must lie inside the disk.</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, buffer.Length);
        return ReadCoreAsync(offset, buffer, async: true, cancellationToken);
    }

    ValueTask IGuestDisk.ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        var inside = (int)Math.Clamp(Size - offset, 0, buffer.Length);
        buffer.Span[inside..].Clear();
        return inside == 0 ? ValueTask.CompletedTask : ReadCoreAsync(offset, buffer[..inside], async, cancellationToken);
    }

    /// <summary>The read path: one metadata lookup per mapping run, data transferred outside the lock.</summary>
    internal async ValueTask ReadCoreAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken, bool lockRange = true)
    {
        if (buffer.IsEmpty)
        {
            return;
        }

        ThrowIfEncrypted();
        using var range = IsWritable && lockRange
            ? await _core.GuestLock.AcquireAsync(_core.Geometry.StartOfCluster(offset), offset + buffer.Length, exclusive: false, async, cancellationToken).ConfigureAwait(false)
            : default;
        var done = 0;
        while (done < buffer.Length)
        {
            var position = offset + done;
            MappingRun run;
            using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                run = await _map.GetRunLockedAsync(position, buffer.Length - done, async, cancellationToken).ConfigureAwait(false);
            }

            var destination = buffer.Slice(done, (int)run.Length);
            await ReadRunAsync(run, destination, async, cancellationToken).ConfigureAwait(false);
            done += (int)run.Length;
        }
    }

    private void ThrowIfEncrypted()
    {
        if (_core.Header.Header.CryptMethod != EncryptionMethod.None)
        {
            throw EncryptionUnsupported(_core.Header.Header.CryptMethod);
        }
    }

    private async ValueTask ReadRunAsync(MappingRun run, Memory<byte> destination, bool async, CancellationToken cancellationToken)
    {
        switch (run.Type)
        {
            case SubclusterType.Normal:
                await _core.DataFile.ReadZeroFilledAsync(run.HostOffset, destination, async, cancellationToken).ConfigureAwait(false);
                break;
            case SubclusterType.Compressed:
                await ReadCompressedAsync(run, destination, async, cancellationToken).ConfigureAwait(false);
                break;
            case SubclusterType.UnallocatedPlain:
            case SubclusterType.UnallocatedAllocated:
                if (_core.Backing is { } backing)
                {
                    ChainContext.EnsureStack();
                    await backing.ReadAsync(run.GuestOffset, destination, async, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    destination.Span.Clear();
                }

                break;
            default:
                destination.Span.Clear();
                break;
        }
    }

    private async ValueTask ReadCompressedAsync(MappingRun run, Memory<byte> destination, bool async, CancellationToken cancellationToken)
    {
        var offsetInCluster = (int)_core.Geometry.OffsetInCluster(run.GuestOffset);
        if (_core.Decompressed.TryCopy(run.Entry, offsetInCluster, destination.Span))
        {
            return;
        }

        var cluster = ArrayPool<byte>.Shared.Rent(_core.Geometry.ClusterSize);
        try
        {
            await DecompressClusterAsync(run.Entry, cluster.AsMemory(0, _core.Geometry.ClusterSize), async, cancellationToken).ConfigureAwait(false);
            cluster.AsSpan(offsetInCluster, destination.Length).CopyTo(destination.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(cluster);
        }
    }

    /// <summary>Reads and decompresses the cluster an entry describes into <paramref name="cluster"/>.</summary>
    internal async ValueTask DecompressClusterAsync(L2Entry entry, Memory<byte> cluster, bool async, CancellationToken cancellationToken)
    {
        var descriptor = CompressedClusterDescriptor.Decode(entry, _core.Geometry.ClusterBits);
        var compressed = ArrayPool<byte>.Shared.Rent(descriptor.CompressedLength);
        try
        {
            var input = compressed.AsMemory(0, descriptor.CompressedLength);
            await _core.File.ReadZeroFilledAsync(descriptor.HostOffset, input, async, cancellationToken).ConfigureAwait(false);
            ClusterCompression.Decompress(_core.Header.Header.CompressionType, input.Span, cluster.Span, descriptor.HostOffset);
            _core.Decompressed.Store(entry, cluster.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(compressed);
        }
    }
}
