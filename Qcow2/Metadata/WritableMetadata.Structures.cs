using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

internal sealed partial class WritableMetadata
{
    /// <summary>
    /// Writes a new snapshot table into fresh clusters, switches the header to it with one atomic
    /// write (count and offset are adjacent), then frees the old table.
    /// </summary>
    public async ValueTask WriteSnapshotTableAsync(IReadOnlyList<SnapshotTableEntry> snapshots, bool async, CancellationToken cancellationToken)
    {
        // Deleting a snapshot writes the table before any refcount changes: a crash right after
        // leaks its clusters, which the dirty bit (set first) lets the next open repair.
        await Refcounts.BeforeChangeAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _metadata.Header.Header;
        var oldOffset = header.SnapshotsOffset;
        var oldBytes = _metadata.Snapshots.Sum(s => (long)s.StoredLength);
        var bytes = new byte[snapshots.Sum(s => (long)s.StoredLength)];
        if (bytes.Length > Qcow2Layout.MaxSnapshotTableBytes)
        {
            throw new InvalidOperationException($"The snapshot table would exceed QEMU's limit of {Qcow2Layout.MaxSnapshotTableBytes >> 20} MiB.");
        }

        var position = 0;
        foreach (var snapshot in snapshots)
        {
            position += snapshot.Write(bytes.AsSpan(position));
        }

        var offset = await WriteNewStructureAsync(bytes, async, cancellationToken).ConfigureAwait(false);
        if (offset != 0)
        {
            await FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await _metadata.WriteHeaderFieldsAsync(header with { SnapshotCount = snapshots.Count, SnapshotsOffset = offset }, Qcow2Header.SnapshotCountOffset, 12, async, cancellationToken).ConfigureAwait(false);
        _metadata.Snapshots = snapshots;
        if (oldOffset != 0 && oldBytes > 0)
        {
            await FreeMetadataAsync(oldOffset, oldBytes, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Grows the active L1 table to <paramref name="entries"/> entries (qcow2_grow_l1_table): the new
    /// table is written in fresh clusters, the header switched with one atomic write, the old table freed.
    /// </summary>
    public async ValueTask GrowL1Async(long entries, bool async, CancellationToken cancellationToken)
    {
        var l1 = _metadata.ActiveL1;
        if (entries <= l1.Size)
        {
            return;
        }

        var geometry = _metadata.Geometry;
        var oldOffset = l1.Offset;
        var oldClusters = geometry.ClustersFor((long)l1.Size * Qcow2Layout.L1EntrySize);
        var clusters = (int)geometry.ClustersFor(entries * Qcow2Layout.L1EntrySize);
        var newOffset = await Refcounts.AllocateClustersAsync(clusters, async, cancellationToken).ConfigureAwait(false);

        // Everything the new table points at (and its own refcount) must be on disk first.
        await FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var values = new ulong[entries];
        l1.ToArray().CopyTo(values, 0);
        var grown = new L1Table(newOffset, values);
        var bytes = new byte[(long)clusters * geometry.ClusterSize];
        grown.Encode().CopyTo(bytes, 0);
        await _metadata.File.WriteAsync(newOffset, bytes, async, cancellationToken).ConfigureAwait(false);
        await _metadata.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _metadata.NoteFileEnd(newOffset + bytes.Length);
        await _metadata.WriteHeaderFieldsAsync(_metadata.Header.Header with { L1Size = (int)entries, L1TableOffset = newOffset }, Qcow2Header.L1SizeOffset, 12, async, cancellationToken).ConfigureAwait(false);
        l1.Replace(newOffset, values);
        for (var i = 0L; i < oldClusters && oldOffset != 0; i++)
        {
            await Refcounts.ChangeAsync((oldOffset >> geometry.ClusterBits) + i, -1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Gives the active L1 table new entries in place, durably, and returns the old ones: the new
    /// entries are on disk before anything the old ones reached may lose its reference.
    /// </summary>
    public async ValueTask<ulong[]> ReplaceActiveL1Async(ulong[] entries, bool async, CancellationToken cancellationToken)
    {
        var l1 = _metadata.ActiveL1;
        var old = l1.ToArray();
        l1.Replace(l1.Offset, entries);
        var encoded = l1.Encode();
        var padded = new byte[_metadata.Geometry.RoundUpToCluster(encoded.Length)];
        encoded.CopyTo(padded, 0);
        await _metadata.File.WriteAsync(l1.Offset, padded, async, cancellationToken).ConfigureAwait(false);
        await _metadata.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        return old;
    }

    /// <summary>
    /// Unhooks an L2 table whose entries were all dropped: everything before is flushed, the L1
    /// entry cleared on disk, then the table's reference dropped.
    /// </summary>
    public async ValueTask UnhookL2TableAsync(long l1Index, bool async, CancellationToken cancellationToken)
    {
        var l1 = _metadata.ActiveL1;
        var tableOffset = l1[l1Index].L2TableOffset;
        await FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await l1.SetAsync(_metadata.File, l1Index, L1Entry.Unallocated, async, cancellationToken).ConfigureAwait(false);
        await _metadata.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await Refcounts.ChangeAsync(tableOffset >> _metadata.Geometry.ClusterBits, -1, ClusterUse.L2Table, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Cuts the image file after its last cluster in use (or reserved by an extension). Call after a flush.</summary>
    public async ValueTask TruncateUnusedTailAsync(bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var length = _metadata.RefreshFileLength();
        var last = geometry.ClustersFor(length) - 1;
        var keep = Math.Max(_metadata.Reservations.HighestEnd(), 1);
        while (last >= keep && await Refcounts.GetAsync(last, async, cancellationToken).ConfigureAwait(false) == 0)
        {
            last--;
        }

        var end = (last + 1) << geometry.ClusterBits;
        if (end < length)
        {
            _metadata.File.SetLength(end);
            _metadata.NoteTruncated(end);
        }
    }

    /// <summary>
    /// Sets the in-use flag of every persistent bitmap, each flag written in place: until the
    /// session stores them at close, a crash must leave them inconsistent, not silently stale.
    /// </summary>
    public ValueTask MarkBitmapsInUseAsync(bool async, CancellationToken cancellationToken) =>
        WriteBitmapFlagsInPlaceAsync(bitmap => bitmap.Flags | BitmapFlags.InUse, async, cancellationToken);

    /// <summary>
    /// Rewrites the flags of each directory entry where it stands (four bytes each, a sector-atomic
    /// write) and flushes; the directory's layout is unchanged, so nothing else moves.
    /// </summary>
    public async ValueTask WriteBitmapFlagsInPlaceAsync(Func<BitmapDirectoryEntry, BitmapFlags> flagsOf, bool async, CancellationToken cancellationToken)
    {
        if (_metadata.Bitmaps.Count == 0 || _metadata.Header.Bitmaps is not { } extension)
        {
            return;
        }

        var position = extension.DirectoryOffset;
        var updated = new List<BitmapDirectoryEntry>(_metadata.Bitmaps.Count);
        var flags = new byte[4];
        foreach (var bitmap in _metadata.Bitmaps)
        {
            var wanted = flagsOf(bitmap);
            if (wanted != bitmap.Flags)
            {
                BinaryPrimitives.WriteUInt32BigEndian(flags, (uint)wanted);
                await _metadata.File.WriteAsync(position + BitmapDirectoryEntry.FlagsOffset, flags, async, cancellationToken).ConfigureAwait(false);
            }

            updated.Add(bitmap with { Flags = wanted });
            position += bitmap.StoredLength;
        }

        await _metadata.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _metadata.Bitmaps = updated;
    }

    /// <summary>
    /// Writes a whole refcount structure of another entry width after the file's end (the
    /// references counted by a check) and switches the header to it with one write. The old
    /// structure is left leaked; the refcount cache is dropped, as its blocks had the old width.
    /// </summary>
    public async ValueTask SwitchRefcountWidthAsync(int order, ulong[] references, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var areaStart = Math.Max(Math.Max(references.Length, geometry.ClustersFor(_metadata.RefreshFileLength())), _metadata.Reservations.HighestEnd());
        var placement = await RefcountStructureBuilder.WriteAsync(_metadata.File, geometry.ClusterBits, order, references, areaStart, async, cancellationToken).ConfigureAwait(false);
        _metadata.NoteFileEnd(placement.EndCluster << geometry.ClusterBits);
        var header = _metadata.Header;
        var switched = header.Header with { RefcountOrder = order, RefcountTableOffset = placement.TableOffset, RefcountTableClusters = placement.TableClusters };
        await _metadata.RewriteHeaderAsync(header with { Header = switched }, async, cancellationToken).ConfigureAwait(false);
        _metadata.RefcountCache.Clear(); // this session still has the old width in its geometry: the caller only disposes it
    }
}
