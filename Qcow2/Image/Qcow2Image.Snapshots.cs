using System.Globalization;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// Takes an internal snapshot of the active disk (qemu-img snapshot -c): the active L1 table is
    /// copied, everything it reaches gains a reference, and the active tables lose COPIED so later
    /// writes copy instead of changing the snapshot. Names need not be unique; ids are.
    /// </summary>
    /// <returns>The new snapshot table entry.</returns>
    /// <exception cref="NotSupportedException">The image is read-only or has an external data file.</exception>
    public SnapshotTableEntry CreateSnapshot(string name)
    {
        ThrowIfDisposed();
        return SyncOver.Run(Guard(CreateSnapshotCoreAsync(name, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="CreateSnapshot"/>
    public ValueTask<SnapshotTableEntry> CreateSnapshotAsync(string name, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(CreateSnapshotCoreAsync(name, async: true, cancellationToken));
    }

    /// <summary>
    /// Reverts the active disk to a snapshot (qemu-img snapshot -a), its virtual size included.
    /// The snapshot stays; what only the old active disk referenced is freed.
    /// </summary>
    /// <param name="key">The snapshot's id or name, as <paramref name="lookup"/> says.</param>
    /// <param name="lookup">Whether <paramref name="key"/> is an id, a name, or an id else a name (qemu-img snapshot -a).</param>
    /// <exception cref="KeyNotFoundException">No snapshot matches.</exception>
    public void ApplySnapshot(string key, SnapshotLookup lookup)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(ApplySnapshotCoreAsync(key, lookup, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="ApplySnapshot"/>
    public ValueTask ApplySnapshotAsync(string key, SnapshotLookup lookup, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(ApplySnapshotCoreAsync(key, lookup, async: true, cancellationToken));
    }

    /// <summary>Deletes a snapshot (qemu-img snapshot -d), freeing what only it referenced.</summary>
    /// <param name="key">The snapshot's id or name, as <paramref name="lookup"/> says.</param>
    /// <param name="lookup">Whether <paramref name="key"/> is an id or a name (qemu-img snapshot -d matches names only).</param>
    /// <exception cref="KeyNotFoundException">No snapshot matches.</exception>
    public void DeleteSnapshot(string key, SnapshotLookup lookup)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(DeleteSnapshotCoreAsync(key, lookup, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="DeleteSnapshot"/>
    public ValueTask DeleteSnapshotAsync(string key, SnapshotLookup lookup, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(DeleteSnapshotCoreAsync(key, lookup, async: true, cancellationToken));
    }

    /// <summary>The snapshot <paramref name="key"/> names, looked up as <paramref name="lookup"/> says; null when none matches.</summary>
    public SnapshotTableEntry? FindSnapshot(string key, SnapshotLookup lookup)
    {
        ArgumentNullException.ThrowIfNull(key);
        var snapshots = _core.Snapshots;
        return lookup switch
        {
            SnapshotLookup.Id => snapshots.FirstOrDefault(s => s.Id == key),
            SnapshotLookup.Name => snapshots.FirstOrDefault(s => s.Name == key),
            SnapshotLookup.IdThenName => snapshots.FirstOrDefault(s => s.Id == key) ?? snapshots.FirstOrDefault(s => s.Name == key),
            _ => throw new ArgumentOutOfRangeException(nameof(lookup), lookup, "Unknown snapshot lookup."),
        };
    }

    private SnapshotTableEntry FindSnapshotOrThrow(string key, SnapshotLookup lookup) =>
        FindSnapshot(key, lookup) ?? throw new KeyNotFoundException(lookup switch
        {
            SnapshotLookup.Id => $"The image has no snapshot with id '{key}'.",
            SnapshotLookup.Name => $"The image has no snapshot with name '{key}'.",
            _ => $"The image has no snapshot with id or name '{key}'.",
        });

    /// <summary>
    /// Drops every mapping of the active disk, so all of it reads from the backing file again (or
    /// as zeros without one), as qemu-img commit leaves the overlay: clusters only the active disk
    /// used are freed and the file is shortened. Snapshots keep their data.
    /// </summary>
    public void MakeEmpty()
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(MakeEmptyCoreAsync(async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="MakeEmpty"/>
    public ValueTask MakeEmptyAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(MakeEmptyCoreAsync(async: true, cancellationToken));
    }

    private async ValueTask MakeEmptyCoreAsync(bool async, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();

        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await ReplaceActiveTreeLockedAsync(new ulong[_core.ActiveL1.Size], async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await TruncateUnusedTailLockedAsync(async, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask<SnapshotTableEntry> CreateSnapshotCoreAsync(string name, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (System.Text.Encoding.UTF8.GetByteCount(name) > ushort.MaxValue)
        {
            throw new ArgumentException("A snapshot name is limited to 65535 bytes.", nameof(name));
        }

        ThrowUnlessSnapshotsAllowed();
        if (_core.Snapshots.Count >= Qcow2Layout.MaxSnapshots)
        {
            throw new InvalidOperationException($"The image already has the maximum of {Qcow2Layout.MaxSnapshots} snapshots.");
        }

        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);

        // The copy of the active L1 table, then one more reference to everything it reaches; the
        // active tables lose COPIED, and all of it is on disk before the snapshot table names the copy.
        var l1 = _core.ActiveL1;
        var entries = l1.ToArray();
        var l1Offset = 0L;
        if (entries.Length > 0)
        {
            var bytes = PadToClusters(l1.Encode());
            l1Offset = await _core.RefcountManager!.AllocateClustersAsync((int)(bytes.Length >> _core.Geometry.ClusterBits), async, cancellationToken).ConfigureAwait(false);
            await _core.File.WriteAsync(l1Offset, bytes, async, cancellationToken).ConfigureAwait(false);
            _core.NoteFileEnd(l1Offset + bytes.Length);
        }

        await ChangeTreeRefcountsAsync(entries, +1, async, cancellationToken).ConfigureAwait(false);
        await RecomputeCopiedLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);

        var now = DateTimeOffset.UtcNow;
        var unixMicroseconds = (now - DateTimeOffset.UnixEpoch).Ticks / 10;
        var snapshot = new SnapshotTableEntry
        {
            L1TableOffset = l1Offset,
            L1Size = entries.Length,
            Id = NextSnapshotId(),
            Name = name,
            DateSeconds = (uint)(unixMicroseconds / 1_000_000),
            DateNanoseconds = (uint)(unixMicroseconds % 1_000_000 * 1000),
            DiskSize = Size,
            InstructionCount = 0,
        };
        await WriteSnapshotTableLockedAsync([.. _core.Snapshots, snapshot], async, cancellationToken).ConfigureAwait(false);
        return snapshot;
    }

    private async ValueTask ApplySnapshotCoreAsync(string key, SnapshotLookup lookup, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ThrowUnlessSnapshotsAllowed();
        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var snapshot = FindSnapshotOrThrow(key, lookup);
        var snapshotL1 = await ReadSnapshotL1Async(snapshot, async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await GrowL1Locked(snapshotL1.Length, async, cancellationToken).ConfigureAwait(false);

        // The snapshot's tree gains its references before the active L1 points into it; the old
        // active tree loses its references only after the active L1 no longer does.
        await ChangeTreeRefcountsAsync(snapshotL1, +1, async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var applied = new ulong[_core.ActiveL1.Size];
        snapshotL1.CopyTo(applied, 0);
        await ReplaceActiveTreeLockedAsync(applied, async, cancellationToken).ConfigureAwait(false);
        await RecomputeCopiedLockedAsync(async, cancellationToken).ConfigureAwait(false);
        if (snapshot.DiskSize is long diskSize && diskSize != Size)
        {
            await WriteSizeLockedAsync(diskSize, async, cancellationToken).ConfigureAwait(false);
        }

        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask DeleteSnapshotCoreAsync(string key, SnapshotLookup lookup, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ThrowUnlessSnapshotsAllowed();
        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var snapshot = FindSnapshotOrThrow(key, lookup);
        var snapshotL1 = await ReadSnapshotL1Async(snapshot, async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);

        // First the table without the snapshot (a crash after it only leaks), then its references.
        await WriteSnapshotTableLockedAsync([.. _core.Snapshots.Where(s => !ReferenceEquals(s, snapshot))], async, cancellationToken).ConfigureAwait(false);
        await ChangeTreeRefcountsAsync(snapshotL1, -1, async, cancellationToken).ConfigureAwait(false);
        await FreeClustersAsync(snapshot.L1TableOffset, (long)snapshot.L1Size * Qcow2Layout.L1EntrySize, async, cancellationToken).ConfigureAwait(false);
        await RecomputeCopiedLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
    }

    private void ThrowUnlessSnapshotsAllowed()
    {
        ThrowIfNotWritable();

        if (_core.Geometry.ExternalDataFile)
        {
            throw new NotSupportedException("Internal snapshots are not supported on images with an external data file (as in QEMU).");
        }
    }

    /// <summary>QEMU's choice: one more than the largest numeric id.</summary>
    private string NextSnapshotId()
    {
        var max = 0L;
        foreach (var snapshot in _core.Snapshots)
        {
            if (long.TryParse(snapshot.Id, NumberStyles.None, CultureInfo.InvariantCulture, out var id))
            {
                max = Math.Max(max, id);
            }
        }

        return (max + 1).ToString(CultureInfo.InvariantCulture);
    }

    private async ValueTask<ulong[]> ReadSnapshotL1Async(SnapshotTableEntry snapshot, bool async, CancellationToken cancellationToken)
    {
        if (snapshot.L1Size == 0)
        {
            return [];
        }

        if ((long)snapshot.L1Size * Qcow2Layout.L1EntrySize > Qcow2Layout.MaxL1TableBytes || !_core.Geometry.IsClusterAligned(snapshot.L1TableOffset))
        {
            throw Qcow2Corruption.Create("snapshot table entry", $"snapshot '{snapshot.Name}' has an L1 table of {snapshot.L1Size} entries at 0x{snapshot.L1TableOffset:x}", snapshot.L1TableOffset);
        }

        var table = await L1Table.ReadAsync(_core.File, snapshot.L1TableOffset, snapshot.L1Size, "snapshot L1 table", async, cancellationToken).ConfigureAwait(false);
        return table.ToArray();
    }

    /// <summary>
    /// Adds <paramref name="delta"/> to the refcount of every L2 table an L1 table reaches and of
    /// every cluster those tables map (qcow2_update_snapshot_refcount with an addend).
    /// </summary>
    private async ValueTask ChangeTreeRefcountsAsync(ulong[] l1Entries, int delta, bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var refcounts = _core.RefcountManager!;
        var l2 = new byte[geometry.ClusterSize];
        foreach (var raw in l1Entries)
        {
            var l2Offset = new L1Entry(raw).L2TableOffset;
            if (l2Offset == 0)
            {
                continue;
            }

            using (var table = await _core.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false))
            {
                table.Span.CopyTo(l2);
            }

            for (var index = 0; index < geometry.L2Entries; index++)
            {
                var entry = L2Table.ReadEntry(l2, index, geometry.ExtendedL2);
                switch (entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile))
                {
                    case ClusterType.Normal or ClusterType.ZeroAllocated when !geometry.ExternalDataFile: // data file clusters have no refcounts
                        await refcounts.ChangeAsync(entry.HostOffset >> geometry.ClusterBits, delta, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                        break;
                    case ClusterType.Compressed:
                        await refcounts.ChangeCompressedAsync(CompressedClusterDescriptor.Decode(entry, geometry.ClusterBits), delta, async, cancellationToken).ConfigureAwait(false);
                        break;
                }
            }

            await refcounts.ChangeAsync(l2Offset >> geometry.ClusterBits, delta, ClusterUse.L2Table, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sets COPIED on every active L1 and L2 entry exactly when what it points at has refcount 1
    /// (qcow2_update_snapshot_refcount with addend 0), after the refcounts it reflects.
    /// </summary>
    private async ValueTask RecomputeCopiedLockedAsync(bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var refcounts = _core.RefcountManager!;
        var l1 = _core.ActiveL1;
        await _core.Tables!.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
        for (long l1Index = 0; l1Index < l1.Size; l1Index++)
        {
            var l1Entry = l1[l1Index];
            var l2Offset = l1Entry.L2TableOffset;
            if (l2Offset == 0)
            {
                continue;
            }

            var tableShared = await refcounts.GetAsync(l2Offset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) != 1;
            if (l1Entry.IsCopied == tableShared)
            {
                l1.SetDeferred(l1Index, l1Entry.WithCopied(!tableShared));
            }

            using var table = await _core.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
            for (var index = 0; index < geometry.L2Entries; index++)
            {
                var entry = L2Table.ReadEntry(table.Span, index, geometry.ExtendedL2);
                var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
                if (type is not (ClusterType.Normal or ClusterType.ZeroAllocated))
                {
                    continue;
                }

                var alone = await refcounts.GetAsync(entry.HostOffset >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) == 1;
                if (entry.IsCopied != alone)
                {
                    L2Table.WriteEntry(table.Span, index, geometry.ExtendedL2, entry.WithCopied(alone));
                    TableCache.MarkDirty(table);
                }
            }
        }

        _core.PendingCopiedFixups.Clear();
    }

    /// <summary>
    /// Gives the active L1 table new entries in place: they are on disk before anything the old
    /// entries reached loses its reference, and what was known about the old mappings is forgotten.
    /// </summary>
    private async ValueTask ReplaceActiveTreeLockedAsync(ulong[] entries, bool async, CancellationToken cancellationToken)
    {
        var l1 = _core.ActiveL1;
        var old = l1.ToArray();
        l1.Replace(l1.Offset, entries);
        await _core.File.WriteAsync(l1.Offset, PadToClusters(l1.Encode()), async, cancellationToken).ConfigureAwait(false);
        await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _core.Referrers.Clear();
        _core.PendingCopiedFixups.Clear();
        _core.Decompressed.Invalidate();
        await ChangeTreeRefcountsAsync(old, -1, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes a new snapshot table into fresh clusters, switches the header to it with one atomic
    /// write (count and offset are adjacent), then frees the old table.
    /// </summary>
    private async ValueTask WriteSnapshotTableLockedAsync(IReadOnlyList<SnapshotTableEntry> snapshots, bool async, CancellationToken cancellationToken)
    {
        // Deleting a snapshot writes the table before any refcount changes: a crash right after
        // leaks its clusters, which the dirty bit (set first) lets the next open repair.
        await _core.RefcountManager!.BeforeChangeAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _core.Header.Header;
        var oldOffset = header.SnapshotsOffset;
        var oldBytes = _core.Snapshots.Sum(s => (long)s.StoredLength);
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

        var offset = 0L;
        if (bytes.Length > 0)
        {
            var padded = PadToClusters(bytes);
            offset = await _core.RefcountManager!.AllocateClustersAsync((int)(padded.Length >> _core.Geometry.ClusterBits), async, cancellationToken).ConfigureAwait(false);
            await _core.File.WriteAsync(offset, padded, async, cancellationToken).ConfigureAwait(false);
            _core.NoteFileEnd(offset + padded.Length);
            await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await _core.WriteHeaderFieldsAsync(header with { SnapshotCount = snapshots.Count, SnapshotsOffset = offset }, Qcow2Header.SnapshotCountOffset, 12, async, cancellationToken).ConfigureAwait(false);
        _core.Snapshots = snapshots;
        if (oldOffset != 0 && oldBytes > 0)
        {
            await FreeClustersAsync(oldOffset, oldBytes, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Drops one reference from every cluster of a metadata range.</summary>
    private async ValueTask FreeClustersAsync(long offset, long bytes, bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        for (var cluster = offset >> geometry.ClusterBits; cluster < (offset + bytes + geometry.ClusterSize - 1) >> geometry.ClusterBits; cluster++)
        {
            await _core.RefcountManager!.ChangeAsync(cluster, -1, ClusterUse.Metadata, async, cancellationToken).ConfigureAwait(false);
        }
    }

    private byte[] PadToClusters(byte[] bytes)
    {
        var padded = new byte[_core.Geometry.RoundUpToCluster(bytes.Length)];
        bytes.CopyTo(padded, 0);
        return padded;
    }
}
