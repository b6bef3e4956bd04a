using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The metadata writes of check and repair (QEMU's qcow2_check_refcounts fixes, its refcount
/// rebuild, and the salvage pass). A repair runs under the metadata lock after the caches were
/// written out, and changes tables in the file directly rather than through the caches; the rules
/// that keeps safe live here:
/// <list type="bullet">
/// <item>a rewrite of an existing table is refused when it would land on other live metadata
/// (QEMU's overlap check: a hostile entry may name the header or a refcount block as its table);</item>
/// <item>every table written is forgotten by the caches, so no stale copy is read or written back;</item>
/// <item>what a header switch points at is written and flushed first (new refcount table, new
/// snapshot table), and the file only grows.</item>
/// </list>
/// </summary>
internal sealed class RepairWriter(ImageMetadata metadata)
{
    /// <summary>The length of the image file now.</summary>
    public long FileLength => metadata.File.Length;

    /// <summary>Grows the file to <paramref name="length"/> bytes (the new part reads as zeros); never shrinks it.</summary>
    public void ExtendFile(long length)
    {
        if (length > metadata.File.Length)
        {
            metadata.File.SetLength(length);
        }

        metadata.NoteFileEnd(length);
    }

    /// <summary>
    /// Writes into clusters this repair appended past the old end of the file (see
    /// <see cref="ExtendFile"/>): nothing the image names can lie there, so no overlap check.
    /// </summary>
    public ValueTask WriteAppendedAsync(long offset, ReadOnlyMemory<byte> bytes, bool async, CancellationToken cancellationToken) =>
        metadata.File.WriteAsync(offset, bytes, async, cancellationToken);

    /// <summary>
    /// Rewrites [offset, offset + bytes) of a table in place unless that range overlaps live
    /// metadata other than <paramref name="own"/>; returns the name of the structure it would
    /// have overwritten (nothing written), or null once written.
    /// </summary>
    public async ValueTask<string?> RewriteAsync(long offset, ReadOnlyMemory<byte> bytes, MetadataKind own, bool async, CancellationToken cancellationToken)
    {
        if (metadata.FindOverlap(offset, bytes.Length, own) is { } overlapped)
        {
            return overlapped;
        }

        await metadata.File.WriteAsync(offset, bytes, async, cancellationToken).ConfigureAwait(false);
        var cluster = metadata.Geometry.StartOfCluster(offset);
        metadata.L2Cache.Forget(cluster);
        metadata.RefcountCache.Forget(cluster);
        return null;
    }

    /// <summary>Makes what was written durable before anything points at it.</summary>
    public ValueTask FlushAsync(bool async, CancellationToken cancellationToken) => metadata.File.FlushAsync(async, cancellationToken);

    /// <summary>Forgets every L2 table cached, after a repair that rewrote tables around the cache.</summary>
    public void ForgetL2Tables() => metadata.L2Cache.Clear();

    /// <summary>Writes out and forgets every cached refcount block: a rebuild replaces them all.</summary>
    public async ValueTask ForgetRefcountBlocksAsync(bool async, CancellationToken cancellationToken)
    {
        await metadata.RefcountCache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        metadata.RefcountCache.Clear();
    }

    /// <summary>
    /// Points the header at a snapshot table holding <paramref name="kept"/>, written and flushed
    /// at <paramref name="offset"/> (0 when none is kept), and the open image at its entries.
    /// </summary>
    public async ValueTask SwitchSnapshotTableAsync(long offset, IReadOnlyList<SnapshotTableEntry> kept, bool async, CancellationToken cancellationToken)
    {
        var header = metadata.Header.Header with { SnapshotCount = kept.Count, SnapshotsOffset = offset };
        await metadata.WriteHeaderFieldsAsync(header, Qcow2Header.SnapshotCountOffset, 12, async, cancellationToken).ConfigureAwait(false);
        metadata.Snapshots = kept;
    }

    /// <summary>
    /// Switches the image to a rebuilt refcount structure whose blocks and table (at
    /// <paramref name="tableOffset"/>, holding <paramref name="entries"/>) are written: flushes
    /// them, then points the header at the table, then the allocator (when writable).
    /// </summary>
    public async ValueTask SwitchRefcountTableAsync(long tableOffset, int tableClusters, ulong[] entries, long fileEnd, RefcountAllocator? allocator, bool async, CancellationToken cancellationToken)
    {
        await metadata.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        metadata.NoteFileEnd(fileEnd);
        await metadata.CommitRefcountTableAsync(tableOffset, tableClusters, async, cancellationToken).ConfigureAwait(false);
        allocator?.Table.Replace(tableOffset, tableClusters, entries);
        allocator?.ResetAllocationHints();
    }
}
