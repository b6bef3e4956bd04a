using System.Buffers;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Image;

internal sealed partial class GuestWriter
{
    /// <summary>
    /// Most clusters one run starting at <paramref name="start"/> allocates and writes at once: 8 MiB
    /// of data, and never past the L2 table's end, as QEMU bounds an allocation. A run needs that
    /// many contiguous free clusters; unbounded, small clusters would skip every smaller hole and
    /// grow the file instead of filling them.
    /// </summary>
    private int MaxRunClusters(long start)
    {
        var geometry = _metadata.Geometry;
        var leftInTable = geometry.L2Entries - geometry.L2Index(start);
        return (int)Math.Min(leftInTable, (8 << 20) >> geometry.ClusterBits);
    }

    /// <summary>
    /// Whether whole clusters that need fresh host clusters may be written as runs. Only with an
    /// allocator that never shares (its <see cref="IClusterAllocator.Place"/> always answers
    /// "fresh", so it need not be asked per cluster) and clusters inside the image file.
    /// </summary>
    private bool WritesRuns => !_writable.Allocator.SharesClusters && !_metadata.Geometry.ExternalDataFile;

    /// <summary>
    /// Writes the leading whole clusters of <paramref name="data"/> (guest offset
    /// <paramref name="start"/>, cluster aligned) that each need a fresh host cluster as one run, as
    /// QEMU's qcow2_alloc_host_offset does: one allocation of contiguous host clusters, one data
    /// write, then every L2 entry under one metadata lock, in the order a single cluster uses
    /// (data before the entries that point at it). Stops before a cluster of zeros (zero detection
    /// takes it), a cluster written in place, and the disk's last partial cluster. Returns the bytes
    /// written; 0 when fewer than two clusters qualify, and the caller writes cluster by cluster.
    /// </summary>
    private async ValueTask<int> WriteFreshRunAsync(long start, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var clusterSize = geometry.ClusterSize;
        var limit = Math.Min(data.Length / clusterSize, MaxRunClusters(start));
        if (limit < 2)
        {
            return 0;
        }

        var states = ArrayPool<ClusterState>.Shared.Rent(limit);
        try
        {
            return await WriteFreshRunAsync(start, data, states, limit, async, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<ClusterState>.Shared.Return(states);
        }
    }

    private async ValueTask<int> WriteFreshRunAsync(long start, ReadOnlyMemory<byte> data, ClusterState[] states, int limit, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var clusterSize = geometry.ClusterSize;
        var count = 0;
        long host;
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            for (; count < limit; count++)
            {
                var clusterStart = start + ((long)count << geometry.ClusterBits);
                if (ClusterBytesAt(clusterStart) != clusterSize)
                {
                    break;
                }

                // The mapping first: a cluster written in place (a rewrite) ends the run before its
                // bytes are scanned, so the per-cluster path that takes it scans them only once.
                var state = await InspectClusterLockedAsync(clusterStart, wholeCluster: true, async, cancellationToken).ConfigureAwait(false);
                if (state.InPlace || !data.Span.Slice(count * clusterSize, clusterSize).ContainsAnyExcept((byte)0))
                {
                    break;
                }

                states[count] = state;
            }

            if (count < 2)
            {
                return 0;
            }

            if (_writable.Refcounts.QuarantinedClusters >= QuarantineFlushClusters)
            {
                await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            }

            host = await _writable.Refcounts.AllocateClustersAsync(count, async, cancellationToken).ConfigureAwait(false);
        }

        var bytes = count * clusterSize;
        try
        {
            await WriteDataAsync(host, data[..bytes], async, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException)
        {
            for (var i = 0; i < count; i++)
            {
                await AbortAllocationAsync(host + ((long)i << geometry.ClusterBits), async).ConfigureAwait(false);
            }

            throw;
        }

        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            for (var i = 0; i < count; i++)
            {
                var state = states[i];
                var clusterHost = host + ((long)i << geometry.ClusterBits);
                await LinkAsync(state, L2Entry.Normal(clusterHost, copied: true), NewBitmap(state, 0, clusterSize, 0, clusterSize), async, cancellationToken).ConfigureAwait(false);
                _writable.Allocator.OnStored(new ClusterPlacementRequest(state.ClusterStart, data.Slice(i * clusterSize, clusterSize), null), clusterHost);
            }
        }

        return bytes;
    }
}
