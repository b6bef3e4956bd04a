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
    /// Whether whole clusters may be written as runs. Only with an allocator that never shares (its
    /// <see cref="IClusterAllocator.Place"/> always answers "fresh", so it need not be asked per
    /// cluster) and clusters inside the image file.
    /// </summary>
    private bool WritesRuns => !_writable.Allocator.SharesClusters && !_metadata.Geometry.ExternalDataFile;

    /// <summary>
    /// Writes the leading whole clusters of <paramref name="data"/> (guest offset
    /// <paramref name="start"/>, cluster aligned) as one run when they are all of one kind, as QEMU's
    /// qcow2_alloc_host_offset does:
    /// <list type="bullet">
    /// <item>clusters that each need a fresh host cluster (two or more): one allocation of contiguous
    /// host clusters, one data write, then every L2 entry under one metadata lock, in the order a
    /// single cluster uses (data before the entries that point at it);</item>
    /// <item>clusters rewritten in place whose host clusters follow each other (one or more): one data
    /// write, no metadata change.</item>
    /// </list>
    /// A run stops before a cluster of zeros (zero detection takes it), a cluster of the other kind,
    /// and the disk's last partial cluster. Returns the bytes written; 0 when no run qualifies, and
    /// the caller writes cluster by cluster.
    /// </summary>
    private async ValueTask<int> WriteRunAsync(long start, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var clusterSize = geometry.ClusterSize;
        var limit = Math.Min(data.Length / clusterSize, MaxRunClusters(start));
        if (limit < 1)
        {
            return 0;
        }

        var states = ArrayPool<ClusterState>.Shared.Rent(limit + 1); // a fresh run's allocation follows its states
        try
        {
            var (count, inPlace) = await CollectRunAsync(start, data, states, limit, async, cancellationToken).ConfigureAwait(false);
            if (count == 0)
            {
                return 0;
            }

            return inPlace
                ? await WriteInPlaceRunAsync(states[0].Host, data[..(count * clusterSize)], states, count, async, cancellationToken).ConfigureAwait(false)
                : await WriteFreshRunAsync(states[count], data[..(count * clusterSize)], states, count, async, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<ClusterState>.Shared.Return(states);
        }
    }

    /// <summary>
    /// Under the metadata lock: the run's clusters (their states in <paramref name="states"/>) and its
    /// kind. A fresh run's host clusters are allocated here and handed over in the state after the
    /// last (its Host); an in-place run's host clusters are announced in InPlaceWrites, so that no
    /// one shares them until the bytes are written.
    /// </summary>
    private async ValueTask<(int Count, bool InPlace)> CollectRunAsync(long start, ReadOnlyMemory<byte> data, ClusterState[] states, int limit, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var clusterSize = geometry.ClusterSize;
        var count = 0;
        var inPlace = false;
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            for (; count < limit; count++)
            {
                var clusterStart = start + ((long)count << geometry.ClusterBits);
                if (ClusterBytesAt(clusterStart) != clusterSize)
                {
                    break;
                }

                // The mapping before the bytes: a cluster that ends the run is not scanned for zeros
                // here, so the per-cluster path that takes it scans it only once.
                var state = await InspectClusterLockedAsync(clusterStart, wholeCluster: true, async, cancellationToken).ConfigureAwait(false);
                var simpleInPlace = state.InPlace && state.Type == ClusterType.Normal && state.Entry.IsCopied && !geometry.ExtendedL2
                    && (count == 0 || state.Host == states[0].Host + ((long)count << geometry.ClusterBits));
                if (count == 0)
                {
                    inPlace = simpleInPlace;
                }

                if ((inPlace ? !simpleInPlace : state.InPlace) || !data.Span.Slice(count * clusterSize, clusterSize).ContainsAnyExcept((byte)0))
                {
                    break;
                }

                states[count] = state;
            }

            if (inPlace)
            {
                for (var i = 0; i < count; i++)
                {
                    _writable.InPlaceWrites.TryAdd(states[i].Host, 0);
                }

                return (count, true);
            }

            if (count < 2)
            {
                return (0, false);
            }

            if (_writable.Refcounts.QuarantinedClusters >= QuarantineFlushClusters)
            {
                await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            }

            var host = await _writable.Refcounts.AllocateClustersAsync(count, async, cancellationToken).ConfigureAwait(false);
            states[count] = default(ClusterState) with { Host = host };
            return (count, false);
        }
    }

    /// <summary>Writes a run of clusters that keep their host clusters: one data write, mappings unchanged.</summary>
    private async ValueTask<int> WriteInPlaceRunAsync(long host, ReadOnlyMemory<byte> data, ClusterState[] states, int count, bool async, CancellationToken cancellationToken)
    {
        try
        {
            await WriteDataAsync(host, data, async, cancellationToken).ConfigureAwait(false);
            return data.Length;
        }
        finally
        {
            for (var i = 0; i < count; i++)
            {
                _writable.InPlaceWrites.TryRemove(states[i].Host, out _);
            }
        }
    }

    /// <summary>Writes a run of clusters into the contiguous host clusters allocated for them (<paramref name="allocated"/>.Host), then links them.</summary>
    private async ValueTask<int> WriteFreshRunAsync(ClusterState allocated, ReadOnlyMemory<byte> data, ClusterState[] states, int count, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var clusterSize = geometry.ClusterSize;
        var host = allocated.Host;
        try
        {
            await WriteDataAsync(host, data, async, cancellationToken).ConfigureAwait(false);
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

        return data.Length;
    }
}
