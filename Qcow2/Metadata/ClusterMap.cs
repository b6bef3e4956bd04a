using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Translates guest offsets to host offsets through one L1 table (the active one or a snapshot's)
/// and the shared L2 cache. Every entry is checked the way QEMU checks it before use: alignment,
/// reserved combinations, and offsets past the end of the file.
/// </summary>
internal sealed class ClusterMap(Geometry geometry, L1Table l1, TableCache l2Cache, Func<long> fileLength)
{
    public L1Table L1 { get; } = l1;

    /// <summary>
    /// Returns the run starting at <paramref name="guestOffset"/>, at most <paramref name="maxLength"/>
    /// bytes and never past the end of its L2 table. Caller holds the metadata lock.
    /// </summary>
    public async ValueTask<MappingRun> GetRunLockedAsync(long guestOffset, long maxLength, bool async, CancellationToken cancellationToken)
    {
        var limit = Math.Min(maxLength, geometry.BytesToL2End(guestOffset));
        var l1Index = geometry.L1Index(guestOffset);
        var l1Entry = L1[l1Index];
        var l2Offset = l1Entry.L2TableOffset;
        if (l2Offset == 0)
        {
            return new MappingRun(guestOffset, limit, SubclusterType.UnallocatedPlain, -1, default);
        }

        if (!geometry.IsClusterAligned(l2Offset))
        {
            throw Qcow2Corruption.Create("L1 table", $"entry {l1Index} points at L2 table offset 0x{l2Offset:x}, which is not cluster aligned", L1.Offset);
        }

        if (l2Offset >= fileLength())
        {
            throw Qcow2Corruption.Create("L1 table", $"entry {l1Index} points at an L2 table at 0x{l2Offset:x}, past the end of the file", L1.Offset);
        }

        using var table = await l2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
        var span = table.Span;
        var l2Index = geometry.L2Index(guestOffset);
        var entry = L2Table.ReadEntry(span, l2Index, geometry.ExtendedL2);
        var first = Classify(span, l2Index, geometry.SubclusterIndex(guestOffset), l2Offset);
        var host = first.Host < 0 ? -1 : first.Host + (guestOffset & (geometry.SubclusterSize - 1));
        var length = Math.Min(limit, geometry.SubclusterSize - (guestOffset & (geometry.SubclusterSize - 1)));
        if (first.Type == SubclusterType.Compressed)
        {
            return new MappingRun(guestOffset, Math.Min(limit, geometry.ClusterSize - geometry.OffsetInCluster(guestOffset)), first.Type, -1, entry);
        }

        while (length < limit)
        {
            var next = guestOffset + length;
            var next2 = Classify(span, geometry.L2Index(next), geometry.SubclusterIndex(next), l2Offset);
            if (next2.Type != first.Type || (host >= 0 && next2.Host != host + length))
            {
                break;
            }

            length = Math.Min(limit, length + geometry.SubclusterSize);
        }

        return new MappingRun(guestOffset, length, first.Type, host, entry);
    }

    private (SubclusterType Type, long Host) Classify(ReadOnlySpan<byte> table, int l2Index, int subcluster, long tableOffset)
    {
        var entry = L2Table.ReadEntry(table, l2Index, geometry.ExtendedL2);
        var clusterType = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
        var type = geometry.ExtendedL2
            ? L2Table.ReadBitmap(table, l2Index, extended: true).GetSubclusterType(clusterType, subcluster)
            : SubclusterBitmap.FromClusterType(clusterType);
        switch (type)
        {
            case SubclusterType.Invalid:
                throw Qcow2Corruption.Create("L2 table", $"entry {l2Index} has contradictory subcluster bits (allocated and zero, or allocated without a cluster)", tableOffset);
            case SubclusterType.Compressed:
                if (geometry.ExternalDataFile)
                {
                    throw Qcow2Corruption.Create("L2 table", $"entry {l2Index} is compressed, which an image with an external data file cannot hold", tableOffset);
                }

                var descriptor = CompressedClusterDescriptor.Decode(entry, geometry.ClusterBits);
                if (descriptor.HostOffset >= fileLength())
                {
                    throw Qcow2Corruption.Create("L2 table", $"entry {l2Index} points at compressed data at 0x{descriptor.HostOffset:x}, past the end of the file", tableOffset);
                }

                return (type, -1);
            case SubclusterType.Normal:
            case SubclusterType.ZeroAllocated:
            case SubclusterType.UnallocatedAllocated:
                var cluster = entry.HostOffset;
                if (!geometry.IsClusterAligned(cluster))
                {
                    throw Qcow2Corruption.Create("L2 table", $"entry {l2Index} points at data cluster offset 0x{cluster:x}, which is not cluster aligned", tableOffset);
                }

                if (type == SubclusterType.Normal && !geometry.ExternalDataFile && cluster >= fileLength())
                {
                    throw Qcow2Corruption.Create("L2 table", $"entry {l2Index} points at data cluster 0x{cluster:x}, past the end of the file", tableOffset);
                }

                return (type, cluster + ((long)subcluster << geometry.SubclusterBits));
            default:
                return (type, -1);
        }
    }
}
