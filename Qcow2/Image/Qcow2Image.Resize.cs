using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// Changes the virtual size. Growing extends the L1 table when needed; bytes that become
    /// visible read as zeros even where a backing file or an old partial cluster would show.
    /// Shrinking needs <paramref name="allowShrink"/> (qemu-img resize --shrink) because it drops
    /// the data beyond the new end.
    /// </summary>
    /// <exception cref="InvalidOperationException">Shrinking without permission, or an image whose snapshots forbid it.</exception>
    public void Resize(long newSize, bool allowShrink = false)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(ResizeCoreAsync(newSize, allowShrink, async: false, CancellationToken.None)));
    }

    /// <summary>Sets the size of a freshly created image, whose new bytes must show its backing file.</summary>
    private void SetInitialSize(long size) =>
        SyncOver.Run(Guard(ResizeCoreAsync(size, allowShrink: false, async: false, CancellationToken.None, zeroNewBytes: false)));

    /// <inheritdoc cref="Resize"/>
    public ValueTask ResizeAsync(long newSize, bool allowShrink = false, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(ResizeCoreAsync(newSize, allowShrink, async: true, cancellationToken));
    }

    private async ValueTask ResizeCoreAsync(long newSize, bool allowShrink, bool async, CancellationToken cancellationToken, bool zeroNewBytes = true)
    {
        ThrowIfNotWritable();

        ArgumentOutOfRangeException.ThrowIfNegative(newSize);
        if (newSize % Qcow2Layout.SectorSize != 0)
        {
            throw new ArgumentException($"The new size {newSize} is not a multiple of {Qcow2Layout.SectorSize} bytes.", nameof(newSize));
        }

        var oldSize = Size;
        if (newSize == oldSize)
        {
            return;
        }

        if (_core.Snapshots.Count > 0 && (_core.Header.Header.Version < 3 || newSize < oldSize))
        {
            throw new InvalidOperationException(_core.Header.Header.Version < 3
                ? "Can't resize a v2 image which has snapshots."
                : "Can't shrink an image with internal snapshots.");
        }

        if (newSize < oldSize && !allowShrink)
        {
            throw new InvalidOperationException($"Shrinking from {oldSize} to {newSize} bytes would drop data; pass allowShrink (qemu-img resize --shrink) to do it anyway.");
        }

        if (Qcow2Header.RequiredL1Entries(newSize, _core.Geometry.ClusterBits, _core.Geometry.ExtendedL2) > Qcow2Layout.MaxL1TableBytes / Qcow2Layout.L1EntrySize)
        {
            throw new ArgumentOutOfRangeException(nameof(newSize), $"{newSize} bytes need an L1 table larger than QEMU's 32 MiB limit.");
        }

        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        if (newSize > oldSize)
        {
            await GrowAsync(oldSize, newSize, zeroNewBytes, async, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await ShrinkAsync(newSize, async, cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask GrowAsync(long oldSize, long newSize, bool zeroNewBytes, bool async, CancellationToken cancellationToken)
    {
        using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            await GrowL1Locked(Qcow2Header.RequiredL1Entries(newSize, _core.Geometry.ClusterBits, _core.Geometry.ExtendedL2), async, cancellationToken).ConfigureAwait(false);
            await WriteSizeLockedAsync(newSize, async, cancellationToken).ConfigureAwait(false);
        }

        // Newly visible bytes must read as zeros: a longer backing file or the stale tail of the old
        // last cluster would otherwise show through (QEMU zeroes them the same way).
        var geometry = _core.Geometry;
        var zeroEnd = Math.Min(newSize, geometry.RoundUpToCluster(oldSize));
        if (_core.Backing is { } backing)
        {
            zeroEnd = Math.Max(zeroEnd, Math.Min(newSize, backing.Size));
        }

        if (zeroNewBytes && zeroEnd > oldSize)
        {
            await ZeroRangeHeldAsync(oldSize, zeroEnd - oldSize, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Zeroes guest bytes while the caller holds the range lock.</summary>
    private async ValueTask ZeroRangeHeldAsync(long offset, long length, bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var zeros = new byte[geometry.ClusterSize];
        var end = offset + length;
        for (var position = offset; position < end;)
        {
            var clusterStart = geometry.StartOfCluster(position);
            var from = (int)(position - clusterStart);
            var count = (int)Math.Min(geometry.ClusterSize - from, end - position);
            var zeroed = false;
            if (from == 0 && count == ClusterBytesAt(clusterStart))
            {
                using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
                {
                    zeroed = await ZeroClusterLockedAsync(clusterStart, unmap: true, async, cancellationToken).ConfigureAwait(false);
                }
            }

            if (!zeroed)
            {
                await WriteClusterAsync(clusterStart, from, zeros.AsMemory(0, count), null, async, cancellationToken).ConfigureAwait(false);
            }

            position += count;
        }
    }

    private async ValueTask ShrinkAsync(long newSize, bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var tables = _core.Tables!;
        var firstDropped = geometry.RoundUpToCluster(newSize);
        var keptL1 = Qcow2Header.RequiredL1Entries(newSize, geometry.ClusterBits, geometry.ExtendedL2);
        for (long l1Index = geometry.L1Index(firstDropped); l1Index < _core.ActiveL1.Size; l1Index++)
        {
            var l1Entry = _core.ActiveL1[l1Index];
            if (!l1Entry.IsAllocated)
            {
                continue;
            }

            // Drop every mapping past the new end, as a full discard: the entries become unallocated.
            var tableStart = l1Index << geometry.L2CoverageBits;
            for (var clusterStart = Math.Max(firstDropped, tableStart); clusterStart < tableStart + geometry.L2Coverage; clusterStart += geometry.ClusterSize)
            {
                var (entry, bitmap) = await tables.ReadEntryAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
                if (entry.Raw == 0 && bitmap.Raw == 0)
                {
                    continue;
                }

                using (var table = await tables.GetWritableAsync(clusterStart, async, cancellationToken).ConfigureAwait(false))
                {
                    tables.SetEntry(table, clusterStart, L2Entry.Unallocated, default);
                }

                await ReleaseAsync(entry, entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile), clusterStart, async, cancellationToken).ConfigureAwait(false);
            }

            if (l1Index >= keptL1)
            {
                // The whole table is now empty: unhook it (L1 entry first, on disk), then free it.
                var tableOffset = _core.ActiveL1[l1Index].L2TableOffset;
                await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
                await _core.ActiveL1.SetAsync(_core.File, l1Index, L1Entry.Unallocated, async, cancellationToken).ConfigureAwait(false);
                await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
                await _core.RefcountManager!.ChangeAsync(tableOffset >> geometry.ClusterBits, -1, ClusterUse.L2Table, async, cancellationToken).ConfigureAwait(false);
            }
        }

        await WriteSizeLockedAsync(newSize, async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await TruncateUnusedTailLockedAsync(async, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask WriteSizeLockedAsync(long newSize, bool async, CancellationToken cancellationToken)
    {
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await _core.WriteHeaderFieldsAsync(_core.Header.Header with { Size = newSize }, Qcow2Header.SizeOffset, 8, async, cancellationToken).ConfigureAwait(false);
        Interlocked.Exchange(ref _size, newSize);
    }

    /// <summary>
    /// Grows the active L1 table to <paramref name="entries"/> entries (qcow2_grow_l1_table): the new
    /// table is written in fresh clusters, the header switched with one atomic write, the old table freed.
    /// </summary>
    private async ValueTask GrowL1Locked(long entries, bool async, CancellationToken cancellationToken)
    {
        var l1 = _core.ActiveL1;
        if (entries <= l1.Size)
        {
            return;
        }

        var geometry = _core.Geometry;
        var oldOffset = l1.Offset;
        var oldClusters = geometry.ClustersFor((long)l1.Size * Qcow2Layout.L1EntrySize);
        var clusters = (int)geometry.ClustersFor(entries * Qcow2Layout.L1EntrySize);
        var newOffset = await _core.RefcountManager!.AllocateClustersAsync(clusters, async, cancellationToken).ConfigureAwait(false);

        // Everything the new table points at (and its own refcount) must be on disk first.
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var values = new ulong[entries];
        l1.ToArray().CopyTo(values, 0);
        var grown = new L1Table(newOffset, values);
        var bytes = new byte[(long)clusters * geometry.ClusterSize];
        grown.Encode().CopyTo(bytes, 0);
        await _core.File.WriteAsync(newOffset, bytes, async, cancellationToken).ConfigureAwait(false);
        await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _core.NoteFileEnd(newOffset + bytes.Length);
        await _core.WriteHeaderFieldsAsync(_core.Header.Header with { L1Size = (int)entries, L1TableOffset = newOffset }, Qcow2Header.L1SizeOffset, 12, async, cancellationToken).ConfigureAwait(false);
        l1.Replace(newOffset, values);
        for (var i = 0L; i < oldClusters && oldOffset != 0; i++)
        {
            await _core.RefcountManager.ChangeAsync((oldOffset >> geometry.ClusterBits) + i, -1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Cuts the image file after its last cluster in use (or reserved by an extension).</summary>
    private async ValueTask TruncateUnusedTailLockedAsync(bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var length = _core.RefreshFileLength();
        var last = geometry.ClustersFor(length) - 1;
        var keep = Math.Max(_core.Reservations.HighestEnd(), 1);
        while (last >= keep && await _core.RefcountManager!.GetAsync(last, async, cancellationToken).ConfigureAwait(false) == 0)
        {
            last--;
        }

        var end = (last + 1) << geometry.ClusterBits;
        if (end < length)
        {
            _core.File.SetLength(end);
            _core.NoteTruncated(end);
        }
    }
}
