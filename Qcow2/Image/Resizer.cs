using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// Changes of the virtual size (qcow2_co_truncate): growing the L1 table and zeroing what becomes
/// visible, shrinking by dropping every mapping past the new end, and preallocation.
/// </summary>
internal sealed class Resizer(ImageSession session, WritableState writable, GuestWriter writer)
{
    private readonly ImageSession _session = session;
    private readonly ImageMetadata _metadata = session.Metadata;
    private readonly WritableState _writable = writable;
    private readonly GuestWriter _writer = writer;

    public async ValueTask ResizeAsync(long newSize, bool allowShrink, bool zeroNewBytes, bool async, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(newSize);
        if (newSize % Qcow2Layout.SectorSize != 0)
        {
            throw new ArgumentException($"The new size {newSize} is not a multiple of {Qcow2Layout.SectorSize} bytes.", nameof(newSize));
        }

        var oldSize = _metadata.Header.Header.Size;
        if (newSize == oldSize)
        {
            return;
        }

        if (_metadata.Snapshots.Count > 0 && _metadata.Header.Header.Version < 3)
        {
            throw new InvalidOperationException("Can't resize a v2 image which has snapshots.");
        }

        if (newSize < oldSize && !allowShrink)
        {
            throw new InvalidOperationException($"Shrinking from {oldSize} to {newSize} bytes would drop data; pass allowShrink (qemu-img resize --shrink) to do it anyway.");
        }

        if (Qcow2Header.RequiredL1Entries(newSize, _metadata.Geometry.ClusterBits, _metadata.Geometry.ExtendedL2) > Qcow2Layout.MaxL1TableBytes / Qcow2Layout.L1EntrySize)
        {
            throw new ArgumentOutOfRangeException(nameof(newSize), $"{newSize} bytes need an L1 table larger than QEMU's 32 MiB limit.");
        }

        _session.Bitmaps?.ThrowIfAnyInconsistent(); // QEMU cannot resize a bitmap it could not load, so it refuses too
        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        if (newSize > oldSize)
        {
            await GrowAsync(oldSize, newSize, zeroNewBytes, async, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await ShrinkAsync(newSize, async, cancellationToken).ConfigureAwait(false);
        }

        _session.Bitmaps?.Resize(newSize); // new granules start clean, as in QEMU (a resize marks nothing dirty)
    }

    private async ValueTask GrowAsync(long oldSize, long newSize, bool zeroNewBytes, bool async, CancellationToken cancellationToken)
    {
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            await _writable.Metadata.GrowL1Async(Qcow2Header.RequiredL1Entries(newSize, _metadata.Geometry.ClusterBits, _metadata.Geometry.ExtendedL2), async, cancellationToken).ConfigureAwait(false);
            await _writable.Metadata.WriteSizeAsync(newSize, async, cancellationToken).ConfigureAwait(false);
        }

        // Newly visible bytes must read as zeros: a longer backing file or the stale tail of the old
        // last cluster would otherwise show through (QEMU zeroes them the same way).
        var geometry = _metadata.Geometry;
        var zeroEnd = Math.Min(newSize, geometry.RoundUpToCluster(oldSize));
        if (_session.Backing is { } backing)
        {
            zeroEnd = Math.Max(zeroEnd, Math.Min(newSize, backing.Size));
        }

        if (zeroNewBytes && zeroEnd > oldSize)
        {
            await _writer.ZeroRangeHeldAsync(oldSize, zeroEnd - oldSize, async, cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask ShrinkAsync(long newSize, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var tables = _writable.Tables;
        var firstDropped = geometry.RoundUpToCluster(newSize);
        var keptL1 = Qcow2Header.RequiredL1Entries(newSize, geometry.ClusterBits, geometry.ExtendedL2);
        for (long l1Index = geometry.L1Index(firstDropped); l1Index < _metadata.ActiveL1.Size; l1Index++)
        {
            var l1Entry = _metadata.ActiveL1[l1Index];
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

                await _writer.UnmapLockedAsync(clusterStart, entry, async, cancellationToken).ConfigureAwait(false);
            }

            if (l1Index >= keptL1)
            {
                // The whole table is now empty: unhook it (L1 entry first, on disk), then free it.
                await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
                await _writable.Metadata.UnhookL2TableAsync(l1Index, async, cancellationToken).ConfigureAwait(false);
            }
        }

        await _writable.Metadata.WriteSizeAsync(newSize, async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.Metadata.TruncateUnusedTailAsync(async, cancellationToken).ConfigureAwait(false);
    }
    /// <summary>
    /// Gives every guest cluster an L2 entry and a host cluster (QEMU's preallocate_co): each L2
    /// table first, then its data clusters as one contiguous run. With extended L2 the subclusters
    /// stay unallocated, as QEMU leaves them. Falloc reserves the data's disk space, full writes zeros.
    /// </summary>
    /// <param name="mode">How far to go.</param>
    /// <param name="async">Whether to run asynchronously.</param>
    /// <param name="cancellationToken">Cancels at I/O boundaries.</param>
    /// <param name="from">Guest offset the unallocated part starts at (a resize's old size): clusters wholly past it are preallocated.</param>
    public async ValueTask PreallocateAsync(Preallocation mode, bool async, CancellationToken cancellationToken, long from = 0)
    {
        var geometry = _metadata.Geometry;
        var size = _metadata.Header.Header.Size;
        var clusters = geometry.ClustersFor(size);
        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var tables = _writable.Tables;
        var data = geometry.ExternalDataFile ? _session.GuestDataFile : _metadata.File;
        for (long first = geometry.ClustersFor(from); first < clusters;)
        {
            var count = (int)(Math.Min(((first / geometry.L2Entries) + 1) * geometry.L2Entries, clusters) - first); // up to the end of this L2 table
            var guest = first << geometry.ClusterBits;
            using var table = await tables.GetWritableAsync(guest, async, cancellationToken).ConfigureAwait(false);
            var host = geometry.ExternalDataFile
                ? guest
                : await _writable.Refcounts.AllocateClustersAsync(count, async, cancellationToken).ConfigureAwait(false);
            var bytes = (long)count << geometry.ClusterBits;
            if (mode == Preallocation.Full)
            {
                var zeros = new byte[Math.Min(bytes, 1 << 20)];
                for (long done = 0; done < bytes; done += zeros.Length)
                {
                    await data.WriteAsync(host + done, zeros.AsMemory(0, (int)Math.Min(zeros.Length, bytes - done)), async, cancellationToken).ConfigureAwait(false);
                }
            }
            else if (mode == Preallocation.Falloc)
            {
                data.Reserve(host, bytes);
            }
            else if (host + bytes > data.Length)
            {
                data.SetLength(host + bytes); // metadata: the clusters exist in the file, as holes
            }

            if (!geometry.ExternalDataFile)
            {
                _metadata.NoteFileEnd(host + bytes);
            }

            await tables.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < count; i++)
            {
                var offset = (first + i) << geometry.ClusterBits;
                tables.SetEntry(table, offset, L2Entry.Normal(host + ((long)i << geometry.ClusterBits), copied: true), default);
            }

            first += count;
        }

        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }
}
