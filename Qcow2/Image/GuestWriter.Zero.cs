using System.Buffers;
using QcowDedup.Qcow2.Compression;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

internal sealed partial class GuestWriter
{
    public async ValueTask WriteZeroesAsync(long offset, long length, bool unmap, bool async, CancellationToken cancellationToken)
    {
        if (length == 0)
        {
            return;
        }

        _session.Bitmaps?.MarkDirty(offset, length);

        var geometry = _metadata.Geometry;
        var end = offset + length;
        using var range = await LockClustersAsync(offset, end, async, cancellationToken).ConfigureAwait(false);
        var zeros = ArrayPool<byte>.Shared.Rent(geometry.ClusterSize);
        try
        {
            Array.Clear(zeros, 0, geometry.ClusterSize);
            for (var position = offset; position < end;)
            {
                var clusterStart = geometry.StartOfCluster(position);
                var from = (int)(position - clusterStart);
                var count = (int)Math.Min(geometry.ClusterSize - from, end - position);
                var whole = from == 0 && count == ClusterBytesAt(clusterStart);
                var zeroed = false;
                if (whole)
                {
                    using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
                    {
                        zeroed = await ZeroClusterLockedAsync(clusterStart, unmap, async, cancellationToken).ConfigureAwait(false);
                    }
                }

                if (!zeroed)
                {
                    await WriteClusterAsync(clusterStart, from, zeros.AsMemory(0, count), null, stable: true, async, cancellationToken).ConfigureAwait(false);
                }

                position += count;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeros);
        }
    }

    /// <summary>
    /// A whole-cluster write of zeros: nothing to do when the cluster already reads as zeros
    /// without any metadata, otherwise the zero-cluster path. False means zeros must be written.
    /// </summary>
    private async ValueTask<bool> ZeroDetectedClusterAsync(long clusterStart, bool async, CancellationToken cancellationToken)
    {
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            var (entry, bitmap) = await _writable.Tables.ReadEntryAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
            if (entry.Raw == 0 && bitmap.Raw == 0 && !BackingShowsThrough(clusterStart))
            {
                return true;
            }

            return await ZeroClusterLockedAsync(clusterStart, unmap: false, async, cancellationToken).ConfigureAwait(false);
        }
    }

    private bool BackingShowsThrough(long clusterStart) => _session.Backing is { } backing && clusterStart < backing.Size;

    /// <summary>
    /// QEMU's zero_in_l2_slice for one whole cluster. Returns false when the image cannot express
    /// zeros here (v2 with a backing file showing through), so the caller writes zero data.
    /// </summary>
    private async ValueTask<bool> ZeroClusterLockedAsync(long clusterStart, bool unmap, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var tables = _writable.Tables;
        var (entry, bitmap) = await tables.ReadEntryAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
        var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
        var allocated = type is ClusterType.Normal or ClusterType.ZeroAllocated;
        L2Entry newEntry;
        SubclusterBitmap newBitmap = default;
        bool release;
        if (_metadata.Header.Header.Version < 3)
        {
            if (BackingShowsThrough(clusterStart))
            {
                return false;
            }

            newEntry = L2Entry.Unallocated;
            release = type != ClusterType.Unallocated;
        }
        else
        {
            release = type == ClusterType.Compressed || (unmap && allocated);
            if (geometry.ExtendedL2)
            {
                newEntry = release ? L2Entry.Unallocated : entry;
                newBitmap = SubclusterBitmap.AllZero;
            }
            else
            {
                newEntry = new L2Entry((release ? 0 : entry.Raw) | L2Entry.ZeroFlag);
            }
        }

        await ClearRawDataFileAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
        if (newEntry == entry && newBitmap == bitmap)
        {
            return true;
        }

        using (var table = await tables.GetWritableAsync(clusterStart, async, cancellationToken).ConfigureAwait(false))
        {
            tables.SetEntry(table, clusterStart, newEntry, newBitmap);
        }

        if (release)
        {
            await ReleaseAsync(entry, type, clusterStart, async, cancellationToken).ConfigureAwait(false);
        }

        return true;
    }

    /// <summary>A raw external data file must always hold the guest's bytes, so zeroing a cluster zeroes it there too.</summary>
    private async ValueTask ClearRawDataFileAsync(long clusterStart, bool async, CancellationToken cancellationToken)
    {
        if ((_metadata.Header.Header.Autoclear & AutoclearFeatures.RawExternalData) == 0)
        {
            return;
        }

        var length = ClusterBytesAt(clusterStart);
        var zeros = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            Array.Clear(zeros, 0, length);
            await _session.GuestDataFile.WriteAsync(clusterStart, zeros.AsMemory(0, length), async, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeros);
        }
    }

    public async ValueTask DiscardAsync(long offset, long length, bool async, CancellationToken cancellationToken)
    {
        _session.Bitmaps?.MarkDirty(offset, length); // QEMU marks the whole request, even where nothing is dropped
        var geometry = _metadata.Geometry;
        var first = geometry.RoundUpToCluster(offset);
        var end = offset + length;
        var last = end == Size ? geometry.RoundUpToCluster(end) : geometry.StartOfCluster(end);
        if (first >= last)
        {
            return;
        }

        using var range = await LockClustersAsync(first, last, async, cancellationToken).ConfigureAwait(false);
        for (var clusterStart = first; clusterStart < last; clusterStart += geometry.ClusterSize)
        {
            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                await DiscardClusterLockedAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>QEMU's discard_in_l2_slice for a guest discard request (not a full discard).</summary>
    private async ValueTask DiscardClusterLockedAsync(long clusterStart, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var tables = _writable.Tables;
        var (entry, bitmap) = await tables.ReadEntryAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
        var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
        var allocated = type is ClusterType.Normal or ClusterType.ZeroAllocated or ClusterType.Compressed;
        if (_session.Backing is null && !allocated)
        {
            return;
        }

        L2Entry newEntry;
        SubclusterBitmap newBitmap = default;
        if (geometry.ExtendedL2)
        {
            newEntry = L2Entry.Unallocated;
            newBitmap = SubclusterBitmap.AllZero;
        }
        else
        {
            newEntry = _metadata.Header.Header.Version >= 3 ? L2Entry.ZeroPlain : L2Entry.Unallocated;
        }

        if (newEntry == entry && newBitmap == bitmap)
        {
            return;
        }

        await ClearRawDataFileAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
        using (var table = await tables.GetWritableAsync(clusterStart, async, cancellationToken).ConfigureAwait(false))
        {
            tables.SetEntry(table, clusterStart, newEntry, newBitmap);
        }

        await ReleaseAsync(entry, type, clusterStart, async, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask WriteCompressedAsync(long offset, ReadOnlyMemory<byte> cluster, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        if (!geometry.IsClusterAligned(offset) || cluster.Length != ClusterBytesAt(offset))
        {
            throw new ArgumentException($"A compressed write must cover exactly the cluster at a cluster-aligned offset ({ClusterBytesAt(offset)} bytes at 0x{offset:x}).", nameof(cluster));
        }

        _session.Bitmaps?.MarkDirty(offset, cluster.Length);
        var full = ArrayPool<byte>.Shared.Rent(geometry.ClusterSize);
        var compressed = ArrayPool<byte>.Shared.Rent(geometry.ClusterSize);
        try
        {
            // The last cluster of a disk may be short; it is compressed as a whole, zero-padded cluster.
            var clusterBytes = full.AsMemory(0, geometry.ClusterSize);
            cluster.CopyTo(clusterBytes);
            clusterBytes.Span[cluster.Length..].Clear();
            var length = geometry.ExternalDataFile ? -1 : ClusterCompression.Compress(_metadata.Header.Header.CompressionType, clusterBytes.Span, compressed);
            if (length < 0 || !cluster.Span.ContainsAnyExcept((byte)0))
            {
                await WriteAsync(offset, cluster, async, cancellationToken).ConfigureAwait(false);
                return;
            }

            using var range = await LockClustersAsync(offset, offset + 1, async, cancellationToken).ConfigureAwait(false);
            ClusterState state;
            long host;
            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                state = await InspectClusterLockedAsync(offset, wholeCluster: true, async, cancellationToken).ConfigureAwait(false);
                host = await _writable.Refcounts.AllocateBytesAsync(length, async, cancellationToken).ConfigureAwait(false);
            }

            await WriteDataAsync(host, compressed.AsMemory(0, length), async, cancellationToken).ConfigureAwait(false);
            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                await LinkAsync(state, CompressedClusterDescriptor.Encode(host, length, geometry.ClusterBits), default, async, cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(full);
            ArrayPool<byte>.Shared.Return(compressed);
        }
    }

    /// <summary>Zeroes guest bytes while the caller holds the range lock.</summary>
    public async ValueTask ZeroRangeHeldAsync(long offset, long length, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var zeros = new byte[geometry.ClusterSize];
        var end = offset + length;
        for (var position = offset; position < end;)
        {
            var clusterStart = geometry.StartOfCluster(position);
            var from = (int)(position - clusterStart);
            var count = (int)Math.Min(geometry.ClusterSize - from, end - position);
            var zeroed = false;
            if (from == 0 && count == ClusterBytesAt(clusterStart))
            {
                using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
                {
                    zeroed = await ZeroClusterLockedAsync(clusterStart, unmap: true, async, cancellationToken).ConfigureAwait(false);
                }
            }

            if (!zeroed)
            {
                await WriteClusterAsync(clusterStart, from, zeros.AsMemory(0, count), null, stable: true, async, cancellationToken).ConfigureAwait(false);
            }

            position += count;
        }
    }

    /// <summary>Drops the mapping of a guest cluster as a full discard (it becomes unallocated) and releases what it referenced. Caller holds the metadata lock.</summary>
    public async ValueTask UnmapLockedAsync(long clusterStart, L2Entry entry, bool async, CancellationToken cancellationToken)
    {
        var tables = _writable.Tables;
        using (var table = await tables.GetWritableAsync(clusterStart, async, cancellationToken).ConfigureAwait(false))
        {
            tables.SetEntry(table, clusterStart, L2Entry.Unallocated, default);
        }

        var geometry = _metadata.Geometry;
        await ReleaseAsync(entry, entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile), clusterStart, async, cancellationToken).ConfigureAwait(false);
    }
}
