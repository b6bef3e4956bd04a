using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Check;

/// <summary>Kinds of metadata QEMU's overlap check tells apart (QCOW2_OL_*), in the order it tests them.</summary>
[Flags]
internal enum MetadataKind
{
    None = 0,
    MainHeader = 1 << 0,
    ActiveL1 = 1 << 1,
    ActiveL2 = 1 << 2,
    RefcountTable = 1 << 3,
    RefcountBlock = 1 << 4,
    SnapshotTable = 1 << 5,
    InactiveL1 = 1 << 6,
    BitmapDirectory = 1 << 8,
}

/// <summary>
/// QEMU's metadata overlap check in its default "cached" mode (every kind but inactive L2 tables),
/// computed from the structures the image currently points at — during a refcount rebuild that is
/// still the old refcount table. A repair write it refuses fails the check, as in qemu-img.
/// </summary>
internal static class MetadataOverlap
{
    /// <summary>The name QEMU gives the first structure that [offset, offset + size) would overwrite, or null.</summary>
    public static string? Find(ImageCore core, long offset, long size, MetadataKind ignore = MetadataKind.None)
    {
        var geometry = core.Geometry;
        var header = core.Header.Header;
        if (size <= 0)
        {
            return null;
        }

        if ((ignore & MetadataKind.MainHeader) == 0 && offset < geometry.ClusterSize)
        {
            return "qcow2_header";
        }

        // Runs before every data write: no closures or delegates here.
        var start = geometry.StartOfCluster(offset);
        var end = geometry.RoundUpToCluster(offset + size);
        bool Hits(long otherOffset, long otherSize) => Overlaps(start, end, otherOffset, otherSize);

        var l1 = core.ActiveL1;
        if ((ignore & MetadataKind.ActiveL1) == 0 && Hits(l1.Offset, (long)l1.Size * Qcow2Layout.L1EntrySize))
        {
            return "active L1 table";
        }

        // L2 tables and refcount blocks are single clusters: look each cluster of the range up in
        // the indexes the tables keep, instead of walking the whole L1 or refcount table per write.
        var refcounts = core.RefcountManager?.Table ?? core.Refcounts;
        if ((ignore & MetadataKind.ActiveL2) == 0)
        {
            for (var cluster = start; cluster < end; cluster += geometry.ClusterSize)
            {
                if (l1.PointsAt(cluster, geometry.ClusterSize))
                {
                    return "active L2 table";
                }
            }
        }

        if ((ignore & MetadataKind.RefcountTable) == 0 && refcounts is not null && Hits(refcounts.Offset, (long)refcounts.Size * Qcow2Layout.RefcountTableEntrySize))
        {
            return "refcount table";
        }

        if ((ignore & MetadataKind.RefcountBlock) == 0 && refcounts is not null)
        {
            for (var cluster = start; cluster < end; cluster += geometry.ClusterSize)
            {
                if (refcounts.IsBlock(cluster))
                {
                    return "refcount block";
                }
            }
        }

        if ((ignore & MetadataKind.SnapshotTable) == 0 && header.SnapshotCount > 0 && Hits(header.SnapshotsOffset, core.SnapshotTableBytes))
        {
            return "snapshot table";
        }

        if ((ignore & MetadataKind.InactiveL1) == 0)
        {
            foreach (var snapshot in core.Snapshots)
            {
                if (Hits(snapshot.L1TableOffset, (long)snapshot.L1Size * Qcow2Layout.L1EntrySize))
                {
                    return "inactive L1 table";
                }
            }
        }

        if ((ignore & MetadataKind.BitmapDirectory) == 0 && core.Bitmaps.Count > 0 && core.Header.Bitmaps is { } bitmaps
            && Hits(bitmaps.DirectoryOffset, bitmaps.DirectorySize))
        {
            return "bitmap directory";
        }

        return null;
    }

    private static bool Overlaps(long start, long end, long otherOffset, long otherSize) =>
        otherSize > 0 && start < otherOffset + otherSize && otherOffset < end;
}
