using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// QEMU's metadata overlap check in its default "cached" mode (every kind but inactive L2 tables),
/// computed from the structures the image currently points at — during a refcount rebuild that is
/// still the old refcount table. A repair write it refuses fails the check, as in qemu-img.
/// </summary>
internal static class MetadataOverlap
{
    /// <summary>
    /// The name QEMU gives the first structure that [offset, offset + size) would overwrite, or
    /// null. Caller holds the metadata lock (the index is brought up to date first).
    /// </summary>
    public static string? Find(ImageCore core, long offset, long size, MetadataKind ignore = MetadataKind.None) =>
        core.RefreshOverlapIndex().Find(offset, size, MetadataKind.QemuCached & ~ignore);
}
