using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Metadata;

internal sealed partial class WritableMetadata
{
    /// <summary>
    /// Adds <paramref name="delta"/> to the refcount of every L2 table an L1 table reaches and of
    /// every cluster those tables map (qcow2_update_snapshot_refcount with an addend).
    /// </summary>
    public async ValueTask ChangeTreeRefcountsAsync(ulong[] l1Entries, int delta, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var l2 = new byte[geometry.ClusterSize];
        foreach (var raw in l1Entries)
        {
            var l2Offset = new L1Entry(raw).L2TableOffset;
            if (l2Offset == 0)
            {
                continue;
            }

            using (var table = await _metadata.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false))
            {
                table.Span.CopyTo(l2);
            }

            for (var index = 0; index < geometry.L2Entries; index++)
            {
                var entry = L2Table.ReadEntry(l2, index, geometry.ExtendedL2);
                switch (entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile))
                {
                    case ClusterType.Normal or ClusterType.ZeroAllocated when !geometry.ExternalDataFile: // data file clusters have no refcounts
                        await Refcounts.ChangeAsync(entry.HostOffset >> geometry.ClusterBits, delta, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                        break;
                    case ClusterType.Compressed:
                        await Refcounts.ChangeCompressedAsync(CompressedClusterDescriptor.Decode(entry, geometry.ClusterBits), delta, async, cancellationToken).ConfigureAwait(false);
                        break;
                }
            }

            await Refcounts.ChangeAsync(l2Offset >> geometry.ClusterBits, delta, ClusterUse.L2Table, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sets COPIED on every active L1 and L2 entry exactly when what it points at has refcount 1
    /// (qcow2_update_snapshot_refcount with addend 0), after the refcounts it reflects.
    /// </summary>
    public async ValueTask RecomputeCopiedAsync(bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var l1 = _metadata.ActiveL1;
        await Tables.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
        for (long l1Index = 0; l1Index < l1.Size; l1Index++)
        {
            var l1Entry = l1[l1Index];
            var l2Offset = l1Entry.L2TableOffset;
            if (l2Offset == 0)
            {
                continue;
            }

            var tableShared = await Refcounts.GetAsync(l2Offset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) != 1;
            if (l1Entry.IsCopied == tableShared)
            {
                l1.SetDeferred(l1Index, l1Entry.WithCopied(!tableShared));
            }

            using var table = await _metadata.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
            for (var index = 0; index < geometry.L2Entries; index++)
            {
                var entry = L2Table.ReadEntry(table.Span, index, geometry.ExtendedL2);
                var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
                if (type is not (ClusterType.Normal or ClusterType.ZeroAllocated))
                {
                    continue;
                }

                var alone = await Refcounts.GetAsync(entry.HostOffset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) == 1;
                if (entry.IsCopied != alone)
                {
                    Tables.SetEntryAt(table, index, entry.WithCopied(alone));
                }
            }
        }
    }
}
