using System.Buffers;
using QcowDedup.Qcow2.Compression;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The guest read path over one mapping (the active L1 table, or a snapshot's): one metadata
/// lookup per mapping run under the metadata lock, data read outside it, holes filled from the
/// backing disk. Also answers block status (extents, qemu-img map).
/// </summary>
internal sealed partial class GuestReader
{
    private readonly ImageSession _session;
    private readonly ImageMetadata _metadata;
    private readonly ClusterMap _map;
    private readonly bool _lockRanges;
    private bool? _metadataPreallocated;

    /// <param name="session">The open image.</param>
    /// <param name="map">The mapping to read through.</param>
    /// <param name="lockRanges">Whether reads take the guest range lock (when writes may run at the same time).</param>
    public GuestReader(ImageSession session, ClusterMap map, bool lockRanges)
    {
        _session = session;
        _metadata = session.Metadata;
        _map = map;
        _lockRanges = lockRanges;
    }

    /// <summary>The read path: one metadata lookup per mapping run, data transferred outside the lock.</summary>
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken, bool lockRange = true)
    {
        if (buffer.IsEmpty)
        {
            return;
        }

        ThrowIfEncrypted();
        using var range = _lockRanges && lockRange
            ? await _session.GuestLock.AcquireAsync(_metadata.Geometry.StartOfCluster(offset), offset + buffer.Length, exclusive: false, async, cancellationToken).ConfigureAwait(false)
            : default;
        var done = 0;
        while (done < buffer.Length)
        {
            var position = offset + done;
            MappingRun run;
            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                run = await _map.GetRunLockedAsync(position, buffer.Length - done, async, cancellationToken).ConfigureAwait(false);
            }

            var destination = buffer.Slice(done, (int)run.Length);
            await ReadRunAsync(run, destination, async, cancellationToken).ConfigureAwait(false);
            done += (int)run.Length;
        }
    }

    public void ThrowIfEncrypted()
    {
        if (_metadata.Header.Header.CryptMethod != EncryptionMethod.None)
        {
            throw ImageOpener.EncryptionUnsupported(_metadata.Header.Header.CryptMethod);
        }
    }

    private async ValueTask ReadRunAsync(MappingRun run, Memory<byte> destination, bool async, CancellationToken cancellationToken)
    {
        switch (run.Type)
        {
            case SubclusterType.Normal:
                await _session.GuestDataFile.ReadZeroFilledAsync(run.HostOffset, destination, async, cancellationToken).ConfigureAwait(false);
                break;
            case SubclusterType.Compressed:
                await ReadCompressedAsync(run, destination, async, cancellationToken).ConfigureAwait(false);
                break;
            case SubclusterType.UnallocatedPlain:
            case SubclusterType.UnallocatedAllocated:
                if (_session.Backing is { } backing)
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
        var offsetInCluster = (int)_metadata.Geometry.OffsetInCluster(run.GuestOffset);
        if (_session.Decompressed.TryCopy(run.Entry, offsetInCluster, destination.Span))
        {
            return;
        }

        var cluster = ArrayPool<byte>.Shared.Rent(_metadata.Geometry.ClusterSize);
        try
        {
            await DecompressClusterAsync(run.Entry, cluster.AsMemory(0, _metadata.Geometry.ClusterSize), async, cancellationToken).ConfigureAwait(false);
            cluster.AsSpan(offsetInCluster, destination.Length).CopyTo(destination.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(cluster);
        }
    }

    /// <summary>Reads and decompresses the cluster an entry describes into <paramref name="cluster"/>.</summary>
    public async ValueTask DecompressClusterAsync(L2Entry entry, Memory<byte> cluster, bool async, CancellationToken cancellationToken)
    {
        var descriptor = CompressedClusterDescriptor.Decode(entry, _metadata.Geometry.ClusterBits);
        var compressed = ArrayPool<byte>.Shared.Rent(descriptor.CompressedLength);
        try
        {
            var input = compressed.AsMemory(0, descriptor.CompressedLength);
            await _metadata.File.ReadZeroFilledAsync(descriptor.HostOffset, input, async, cancellationToken).ConfigureAwait(false);
            ClusterCompression.Decompress(_metadata.Header.Header.CompressionType, input.Span, cluster.Span, descriptor.HostOffset);
            _session.Decompressed.Store(entry, cluster.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(compressed);
        }
    }
}
