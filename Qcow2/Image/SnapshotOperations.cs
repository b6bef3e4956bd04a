using System.Globalization;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// Internal snapshots (QEMU's qcow2-snapshot.c): create, apply, delete, and emptying the active
/// disk. The metadata writes and their order belong to <see cref="WritableMetadata"/>; this type
/// decides what changes and holds the locks.
/// </summary>
internal sealed class SnapshotOperations(ImageSession session, WritableState writable)
{
    private readonly ImageSession _session = session;
    private readonly ImageMetadata _metadata = session.Metadata;
    private readonly WritableState _writable = writable;


    /// <summary>The snapshot <paramref name="key"/> names, looked up as <paramref name="lookup"/> says; null when none matches.</summary>
    public static SnapshotTableEntry? Find(IReadOnlyList<SnapshotTableEntry> snapshots, string key, SnapshotLookup lookup)
    {
        ArgumentNullException.ThrowIfNull(key);
        return lookup switch
        {
            SnapshotLookup.Id => snapshots.FirstOrDefault(s => s.Id == key),
            SnapshotLookup.Name => snapshots.FirstOrDefault(s => s.Name == key),
            SnapshotLookup.IdThenName => snapshots.FirstOrDefault(s => s.Id == key) ?? snapshots.FirstOrDefault(s => s.Name == key),
            _ => throw new ArgumentOutOfRangeException(nameof(lookup), lookup, "Unknown snapshot lookup."),
        };
    }

    private SnapshotTableEntry FindOrThrow(string key, SnapshotLookup lookup) =>
        Find(_metadata.Snapshots, key, lookup) ?? throw new KeyNotFoundException(lookup switch
        {
            SnapshotLookup.Id => $"The image has no snapshot with id '{key}'.",
            SnapshotLookup.Name => $"The image has no snapshot with name '{key}'.",
            _ => $"The image has no snapshot with id or name '{key}'.",
        });


    public async ValueTask MakeEmptyAsync(bool async, CancellationToken cancellationToken)
    {
        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await ReplaceActiveTreeLockedAsync(new ulong[_metadata.ActiveL1.Size], async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.Metadata.TruncateUnusedTailAsync(async, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask<SnapshotTableEntry> CreateAsync(string name, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (System.Text.Encoding.UTF8.GetByteCount(name) > ushort.MaxValue)
        {
            throw new ArgumentException("A snapshot name is limited to 65535 bytes.", nameof(name));
        }

        ThrowUnlessSnapshotsAllowed();
        if (_metadata.Snapshots.Count >= Qcow2Layout.MaxSnapshots)
        {
            throw new InvalidOperationException($"The image already has the maximum of {Qcow2Layout.MaxSnapshots} snapshots.");
        }

        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);

        // The copy of the active L1 table, then one more reference to everything it reaches; the
        // active tables lose COPIED, and all of it is on disk before the snapshot table names the copy.
        var l1 = _metadata.ActiveL1;
        var entries = l1.ToArray();
        var l1Offset = entries.Length > 0 ? await _writable.Metadata.WriteNewStructureAsync(l1.Encode(), async, cancellationToken).ConfigureAwait(false) : 0;

        await _writable.Metadata.ChangeTreeRefcountsAsync(entries, +1, async, cancellationToken).ConfigureAwait(false);
        await RecomputeCopiedAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);

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
            DiskSize = _metadata.Header.Header.Size,
            InstructionCount = 0,
        };
        await _writable.Metadata.WriteSnapshotTableAsync([.. _metadata.Snapshots, snapshot], async, cancellationToken).ConfigureAwait(false);
        return snapshot;
    }

    public async ValueTask ApplyAsync(string key, SnapshotLookup lookup, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ThrowUnlessSnapshotsAllowed();
        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var snapshot = FindOrThrow(key, lookup);
        var snapshotL1 = await _metadata.ReadSnapshotL1Async(snapshot, async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.Metadata.GrowL1Async(snapshotL1.Length, async, cancellationToken).ConfigureAwait(false);

        // The snapshot's tree gains its references before the active L1 points into it; the old
        // active tree loses its references only after the active L1 no longer does.
        await _writable.Metadata.ChangeTreeRefcountsAsync(snapshotL1, +1, async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var applied = new ulong[_metadata.ActiveL1.Size];
        snapshotL1.CopyTo(applied, 0);
        await ReplaceActiveTreeLockedAsync(applied, async, cancellationToken).ConfigureAwait(false);
        await RecomputeCopiedAsync(async, cancellationToken).ConfigureAwait(false);
        if (snapshot.DiskSize is long diskSize && diskSize != _metadata.Header.Header.Size)
        {
            await _writable.Metadata.WriteSizeAsync(diskSize, async, cancellationToken).ConfigureAwait(false);
        }

        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DeleteAsync(string key, SnapshotLookup lookup, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ThrowUnlessSnapshotsAllowed();
        using var everything = await _session.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var snapshot = FindOrThrow(key, lookup);
        var snapshotL1 = await _metadata.ReadSnapshotL1Async(snapshot, async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);

        // First the table without the snapshot (a crash after it only leaks), then its references.
        await _writable.Metadata.WriteSnapshotTableAsync([.. _metadata.Snapshots.Where(s => !ReferenceEquals(s, snapshot))], async, cancellationToken).ConfigureAwait(false);
        await _writable.Metadata.ChangeTreeRefcountsAsync(snapshotL1, -1, async, cancellationToken).ConfigureAwait(false);
        await _writable.Metadata.FreeMetadataAsync(snapshot.L1TableOffset, (long)snapshot.L1Size * Qcow2Layout.L1EntrySize, async, cancellationToken).ConfigureAwait(false);
        await RecomputeCopiedAsync(async, cancellationToken).ConfigureAwait(false);
        await _writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    private void ThrowUnlessSnapshotsAllowed()
    {
        if (_metadata.Geometry.ExternalDataFile)
        {
            throw new NotSupportedException("Internal snapshots are not supported on images with an external data file (as in QEMU).");
        }
    }

    /// <summary>QEMU's choice: one more than the largest numeric id.</summary>
    private string NextSnapshotId()
    {
        var max = 0L;
        foreach (var snapshot in _metadata.Snapshots)
        {
            if (long.TryParse(snapshot.Id, NumberStyles.None, CultureInfo.InvariantCulture, out var id))
            {
                max = Math.Max(max, id);
            }
        }

        return (max + 1).ToString(CultureInfo.InvariantCulture);
    }
    /// <summary>
    /// Gives the active L1 table new entries (durable before anything the old ones reached loses a
    /// reference), forgets what was known about the old mappings, then drops the old tree's references.
    /// </summary>
    private async ValueTask ReplaceActiveTreeLockedAsync(ulong[] entries, bool async, CancellationToken cancellationToken)
    {
        var old = await _writable.Metadata.ReplaceActiveL1Async(entries, async, cancellationToken).ConfigureAwait(false);
        _writable.ForgetSharing();
        await _writable.Metadata.ChangeTreeRefcountsAsync(old, -1, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>COPIED follows the refcounts again on every active entry; no sharing fix-up is pending after it.</summary>
    private async ValueTask RecomputeCopiedAsync(bool async, CancellationToken cancellationToken)
    {
        await _writable.Metadata.RecomputeCopiedAsync(async, cancellationToken).ConfigureAwait(false);
        _writable.PendingCopiedFixups.Clear();
    }
}
