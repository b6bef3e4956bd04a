using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Check;

/// <content>Mending one L2 entry: dropping what cannot be trusted, copying what would overflow its refcount.</content>
internal sealed partial class SalvageRepair
{
    /// <summary>Mends one L2 entry in place; returns whether it changed.</summary>
    private bool MendEntry(byte[] table, int index, Mapping guest)
    {
        var extended = _geometry.ExtendedL2;
        var entry = L2Table.ReadEntry(table, index, extended);
        var bitmap = L2Table.ReadBitmap(table, index, extended);
        var type = entry.GetClusterType(extended, _geometry.ExternalDataFile);
        switch (type)
        {
            case ClusterType.Compressed:
                return MendCompressed(table, index, entry, bitmap, guest);

            case ClusterType.Normal or ClusterType.ZeroAllocated:
                return MendStandard(table, index, entry, bitmap, guest);

            case ClusterType.Unallocated when (bitmap.Raw & SubclusterBitmap.AllAllocatedMask) != 0:
                L2Table.WriteBitmap(table, index, new SubclusterBitmap(bitmap.Raw & SubclusterBitmap.AllZeroMask));
                Say($"Cleared the allocation bits 0x{bitmap.Raw & SubclusterBitmap.AllAllocatedMask:x} of the unallocated cluster at {guest} (it has no host cluster)");
                return true;

            default:
                if (type != ClusterType.Compressed && entry.StandardReservedBits != 0)
                {
                    L2Table.WriteEntry(table, index, extended, new L2Entry(entry.Raw & ~L2Entry.StandardReservedMask));
                    Say($"Cleared reserved bits 0x{entry.StandardReservedBits:x} of the L2 entry for {guest}");
                    return true;
                }

                return false;
        }
    }

    /// <summary>A compressed cluster's data past the end of the file is dropped; COPIED and a subcluster bitmap, which it never has, are cleared.</summary>
    private bool MendCompressed(byte[] table, int index, L2Entry entry, SubclusterBitmap bitmap, Mapping guest)
    {
        var extended = _geometry.ExtendedL2;
        var descriptor = CompressedClusterDescriptor.Decode(entry, _geometry.ClusterBits);
        if (descriptor.HostOffset + descriptor.CompressedLength - _dataEnd >= _geometry.ClusterSize || _geometry.ExternalDataFile)
        {
            return Drop(table, index, guest, Invariant($"compressed data at 0x{descriptor.HostOffset:x} {(_geometry.ExternalDataFile ? "in an image with a data file" : "past the end of the file")}"));
        }

        var mended = false;
        if (entry.IsCopied)
        {
            L2Table.WriteEntry(table, index, extended, entry.WithCopied(false));
            Say($"Cleared the COPIED flag of the compressed cluster at {guest} (compressed clusters are never written in place); its data is kept");
            mended = true;
        }

        if (bitmap.Raw != 0)
        {
            L2Table.WriteBitmap(table, index, default);
            Say($"Cleared the subcluster bitmap 0x{bitmap.Raw:x} of the compressed cluster at {guest}; its data is kept");
            mended = true;
        }

        return mended;
    }

    /// <summary>A standard cluster that is misaligned or past the end is dropped; reserved bits and subclusters both zero and allocated are cleared.</summary>
    private bool MendStandard(byte[] table, int index, L2Entry entry, SubclusterBitmap bitmap, Mapping guest)
    {
        var extended = _geometry.ExtendedL2;
        var offset = entry.HostOffset;
        var containsData = extended ? (bitmap.Raw & SubclusterBitmap.AllAllocatedMask) != 0 : !entry.HasZeroFlag;
        if (!_geometry.IsClusterAligned(offset) && containsData)
        {
            return Drop(table, index, guest, Invariant($"host offset 0x{offset:x} not cluster aligned"));
        }

        if (!_geometry.ExternalDataFile && offset + _geometry.ClusterSize - _dataEnd >= _geometry.ClusterSize)
        {
            return Drop(table, index, guest, Invariant($"host offset 0x{offset:x} past the end of the file"));
        }

        var mended = false;
        if (entry.StandardReservedBits != 0)
        {
            L2Table.WriteEntry(table, index, extended, new L2Entry(entry.Raw & ~L2Entry.StandardReservedMask));
            Say($"Cleared reserved bits 0x{entry.StandardReservedBits:x} of the L2 entry for {guest}; its host cluster at 0x{offset:x} is kept");
            mended = true;
        }

        if (bitmap.HasOverlap)
        {
            // Both flags set reads as an I/O error in QEMU. The data is there: keep it.
            var both = (bitmap.Raw >> 32) & bitmap.Raw;
            L2Table.WriteBitmap(table, index, new SubclusterBitmap(bitmap.Raw & ~(both << 32)));
            Say($"Cleared the zero flags of subclusters that are also allocated (mask 0x{both:x}) at {guest}; they read their data again");
            mended = true;
        }

        return mended;
    }

    /// <summary>
    /// Counts the entry's data cluster; a reference the refcount width cannot hold gets its own
    /// copy of the cluster instead (the data is kept, the sharing is not).
    /// </summary>
    private async ValueTask<bool> CountDataReferenceAsync(byte[] table, int index, bool mayChange, Mapping guest, bool async, CancellationToken cancellationToken)
    {
        var extended = _geometry.ExtendedL2;
        var entry = L2Table.ReadEntry(table, index, extended);
        if (_geometry.ExternalDataFile || entry.GetClusterType(extended, false) is not (ClusterType.Normal or ClusterType.ZeroAllocated) || !_geometry.IsClusterAligned(entry.HostOffset))
        {
            return false;
        }

        var cluster = entry.HostOffset >> _geometry.ClusterBits;
        var count = _dataReferences.GetValueOrDefault(cluster);
        if (count < Math.Min(_geometry.MaxRefcount, uint.MaxValue) || !mayChange)
        {
            _dataReferences[cluster] = count + 1;
            return false;
        }

        var copy = AllocateAtEnd(1);
        var data = new byte[_geometry.ClusterSize];
        await metadata.File.ReadZeroFilledAsync(entry.HostOffset, data, async, cancellationToken).ConfigureAwait(false);
        await _repairs.WriteAppendedAsync(copy, data, async, cancellationToken).ConfigureAwait(false);
        L2Table.WriteEntry(table, index, extended, new L2Entry((entry.Raw & ~L2Entry.OffsetMask) | (ulong)copy | L2Entry.CopiedFlag));
        _dataReferences[copy >> _geometry.ClusterBits] = 1;
        Say($"Copied the host cluster at 0x{entry.HostOffset:x} to 0x{copy:x} for {guest}: one more reference would overflow the refcount maximum of {_geometry.MaxRefcount}; the data is kept");
        return true;
    }

    private bool Drop(byte[] table, int index, Mapping guest, string why)
    {
        WriteDropped(table, index);
        Say($"Dropped the mapping of {guest} ({why}): its data is lost, it {DroppedReads}");
        if (guest.GuestOffset < guest.DiskSize)
        {
            // Past the disk's end (an L1 table longer than the disk needs) no guest reads it: nothing is lost.
            AddLoss(new DataLoss(guest.SnapshotId, guest.GuestOffset, Math.Min(_geometry.ClusterSize, guest.DiskSize - guest.GuestOffset), why));
        }

        return true;
    }

    private void WriteDropped(byte[] table, int index)
    {
        if (_geometry.ExtendedL2)
        {
            L2Table.WriteEntry(table, index, extended: true, L2Entry.Unallocated);
            L2Table.WriteBitmap(table, index, DropsToZeroCluster ? SubclusterBitmap.AllZero : default);
        }
        else
        {
            L2Table.WriteEntry(table, index, extended: false, DropsToZeroCluster ? L2Entry.ZeroPlain : L2Entry.Unallocated);
        }
    }
}
