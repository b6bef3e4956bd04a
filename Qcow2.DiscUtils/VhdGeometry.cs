using DiscUtils;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// The CHS geometry of a new VHD, as the VHD specification computes it and as qemu-img sizes the
/// disks it creates: QEMU reads a VHD from another creator by its geometry, not the footer's size,
/// so the capacity is rounded up to whole cylinders that cover the size asked for.
/// </summary>
internal static class VhdGeometry
{
    private const long MaxSectors = 65535L * 16 * 255;

    /// <summary>The smallest geometry whose cylinders cover <paramref name="size"/> bytes.</summary>
    public static Geometry For(long size)
    {
        var wanted = Math.Min(MaxSectors, (size + 511) / 512);
        var (cylinders, heads, sectors) = Calculate(wanted);
        for (var extra = 1L; (long)cylinders * heads * sectors < wanted && wanted + extra <= MaxSectors; extra++)
        {
            (cylinders, heads, sectors) = Calculate(wanted + extra);
        }

        return new Geometry(cylinders, heads, sectors);
    }

    /// <summary>The capacity to create: the geometry's, or the size itself past the largest geometry (QEMU then reads the footer's size).</summary>
    public static long Capacity(long size)
    {
        var geometry = For(size);
        var chs = (long)geometry.Cylinders * geometry.HeadsPerCylinder * geometry.SectorsPerTrack * 512;
        return chs >= size ? chs : (size + 511) / 512 * 512;
    }

    /// <summary>The specification's CHS calculation for a sector count (appendix "CHS Calculation").</summary>
    private static (int Cylinders, int Heads, int Sectors) Calculate(long totalSectors)
    {
        int sectorsPerTrack, heads;
        long cylinderTimesHeads;
        if (totalSectors >= 65535L * 16 * 63)
        {
            sectorsPerTrack = 255;
            heads = 16;
            cylinderTimesHeads = totalSectors / sectorsPerTrack;
        }
        else
        {
            sectorsPerTrack = 17;
            cylinderTimesHeads = totalSectors / sectorsPerTrack;
            heads = (int)Math.Max(4, (cylinderTimesHeads + 1023) / 1024);
            if (cylinderTimesHeads >= heads * 1024L || heads > 16)
            {
                sectorsPerTrack = 31;
                heads = 16;
                cylinderTimesHeads = totalSectors / sectorsPerTrack;
            }

            if (cylinderTimesHeads >= heads * 1024L)
            {
                sectorsPerTrack = 63;
                heads = 16;
                cylinderTimesHeads = totalSectors / sectorsPerTrack;
            }
        }

        return ((int)(cylinderTimesHeads / heads), heads, sectorsPerTrack);
    }
}
