using System.Buffers.Binary;
using System.Globalization;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// check -r all past the point where qemu-img stops (issue 9): the mappings and tables QEMU's
/// check can only report are mended where what they point at can be kept, and dropped where it
/// cannot — every change said in the report, in words that name the guest range it affects.
/// Refcounts are not touched here: the refcount pass that follows rebuilds them from the mended
/// tables, so this pass writes tables directly and places what it must allocate (cluster copies,
/// tables of zero entries, a smaller snapshot table) at the end of the file, which nothing can
/// reference. Caller holds the metadata lock and has flushed the caches.
/// </summary>
/// <remarks>
/// A dropped mapping reads as zeros afterwards — what QEMU already reads there (a cluster past the
/// end of the file reads as zeros) or an explicit hole where QEMU cannot read at all. Without a
/// backing file the entry simply becomes unallocated. With one, an unallocated entry would show
/// the backing file's older bytes as if they were the guest's — so on v3 the entry becomes a zero
/// cluster instead; v2 has no zero clusters, there it reads from the backing file and the report
/// says so.
/// </remarks>
internal sealed partial class SalvageRepair(ImageMetadata metadata, CheckReport report)
{
    private readonly Geometry _geometry = metadata.Geometry;
    private readonly RepairWriter _repairs = new(metadata);
    private const int MaxLines = 1000;
    private const string AndAfter = ", and the clusters after it";
    private readonly HashSet<long> _mendedTables = [];
    private int _told;
    private long _unsaid;
    private readonly Dictionary<long, ulong> _dataReferences = [];
    private long _fileLength;
    private long _dataEnd;

    /// <summary>Number of changes made.</summary>
    public int Changes { get; private set; }

    private bool HasBacking => metadata.Header.BackingFileName is not null;

    private bool DropsToZeroCluster => HasBacking && metadata.Header.Header.Version >= 3;

    private string DroppedReads => !HasBacking ? "reads as zeros now (unallocated)"
        : DropsToZeroCluster ? "reads as zeros now (a zero cluster, not the backing file's data)"
        : "reads from the backing file now (a v2 image has no zero clusters)";

    public async ValueTask RunAsync(bool async, CancellationToken cancellationToken)
    {
        await MendAsync(async, cancellationToken).ConfigureAwait(false);
        if (_unsaid > 0)
        {
            report.Note(Invariant($"... and {_unsaid} more changes like those above (the lost guest ranges are all listed)"));
        }
    }

    private async ValueTask MendAsync(bool async, CancellationToken cancellationToken)
    {
        _fileLength = _repairs.FileLength;
        await ExtendOverHeaderStructuresAsync(async, cancellationToken).ConfigureAwait(false);
        _dataEnd = _fileLength; // what lies past it was never written; what this pass allocates goes there
        await DropBrokenSnapshotsAsync(async, cancellationToken).ConfigureAwait(false);

        var l1 = metadata.ActiveL1;
        var entries = new ulong[l1.Size];
        for (var i = 0; i < entries.Length; i++)
        {
            entries[i] = l1[i].Raw;
        }

        if (await MendL1Async(entries, null, metadata.Header.Header.Size, async, cancellationToken).ConfigureAwait(false) is { } changed)
        {
            foreach (var index in changed)
            {
                await l1.SetAsync(metadata.File, index, new L1Entry(entries[index]), async, cancellationToken).ConfigureAwait(false);
            }
        }

        foreach (var snapshot in metadata.Snapshots)
        {
            var bytes = new byte[(long)snapshot.L1Size * Qcow2Layout.L1EntrySize];
            await metadata.File.ReadZeroFilledAsync(snapshot.L1TableOffset, bytes, async, cancellationToken).ConfigureAwait(false);
            var snapshotEntries = new ulong[snapshot.L1Size];
            for (var i = 0; i < snapshotEntries.Length; i++)
            {
                snapshotEntries[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
            }

            if (await MendL1Async(snapshotEntries, snapshot, snapshot.DiskSize ?? metadata.Header.Header.Size, async, cancellationToken).ConfigureAwait(false) is not null)
            {
                for (var i = 0; i < snapshotEntries.Length; i++)
                {
                    BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), snapshotEntries[i]);
                }

                await WriteTableAsync(snapshot.L1TableOffset, bytes, MetadataKind.InactiveL1, $"L1 table of snapshot {snapshot.Id}", async, cancellationToken).ConfigureAwait(false);
            }
        }

        await _repairs.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _repairs.ForgetL2Tables();
    }

    /// <summary>
    /// A file cut short loses the header's tables with it; QEMU reads what is missing as zeros.
    /// Extending the file over them (zeros, what QEMU reads) makes them real again — bounded by
    /// what the header names, each table already capped by the format's limits.
    /// </summary>
    private async ValueTask ExtendOverHeaderStructuresAsync(bool async, CancellationToken cancellationToken)
    {
        var header = metadata.Header.Header;
        var needed = new (string What, long Offset, long Bytes)[]
        {
            ("header cluster", 0, _geometry.ClusterSize),
            ("refcount table", header.RefcountTableOffset, (long)header.RefcountTableClusters << _geometry.ClusterBits),
            ("active L1 table", header.L1TableOffset, (long)header.L1Size * Qcow2Layout.L1EntrySize),
            ("snapshot table", header.SnapshotsOffset, metadata.SnapshotTableBytes),
        };

        foreach (var (what, offset, bytes) in needed)
        {
            if (bytes <= 0 || offset + bytes <= _fileLength)
            {
                continue; // a table may end inside the last cluster of the file
            }

            var end = _geometry.RoundUpToCluster(offset + bytes);

            if (end - _fileLength > ReferenceCounter.MaxRepairGrowth)
            {
                report.Note(Invariant($"Cannot repair: the {what} at 0x{offset:x} lies more than {ReferenceCounter.MaxRepairGrowth >> 20} MiB past the end of the file"));
                continue;
            }

            if (what == "active L1 table")
            {
                LoseMissingL1Entries(offset, header.L1Size, header.Size);
            }

            _repairs.ExtendFile(end);
            var missing = what == "active L1 table" ? "its missing entries stay unallocated, as QEMU read them: whatever they mapped is lost" : "the missing part reads as zeros, as QEMU read it";
            report.Note(Invariant($"Extended the file to {end} bytes to hold the {what} at 0x{offset:x}, which reached past its end ({missing})"));
            _fileLength = end;
            Changes++;
        }

        await _repairs.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The L1 entries the file no longer holds read as unallocated: what they mapped is lost.</summary>
    private void LoseMissingL1Entries(long tableOffset, int entries, long diskSize)
    {
        var firstMissing = Math.Max(0, (_fileLength - tableOffset + Qcow2Layout.L1EntrySize - 1) / Qcow2Layout.L1EntrySize);
        var rangeBytes = (long)_geometry.L2Entries << _geometry.ClusterBits;
        var start = firstMissing * rangeBytes;
        var end = Math.Min((long)entries * rangeBytes, diskSize);
        if (start < end)
        {
            report.Losses.Add(new DataLoss(null, start, end - start, Invariant($"L1 entries {firstMissing} to {entries - 1} of the active L1 table at 0x{tableOffset:x} lie past the end of the file")));
        }
    }

    /// <summary>A snapshot whose L1 table cannot be located is dropped from the snapshot table.</summary>
    private async ValueTask DropBrokenSnapshotsAsync(bool async, CancellationToken cancellationToken)
    {
        var kept = new List<SnapshotTableEntry>();
        foreach (var snapshot in metadata.Snapshots)
        {
            var problem = !_geometry.IsClusterAligned(snapshot.L1TableOffset) ? "its L1 table offset is not cluster aligned"
                : (long)snapshot.L1Size * Qcow2Layout.L1EntrySize > Qcow2Layout.MaxL1TableBytes ? "its L1 table is too large"
                : snapshot.L1Size > 0 && snapshot.L1TableOffset >= _dataEnd ? "its L1 table is past the end of the file"
                : null;
            if (problem is null)
            {
                kept.Add(snapshot);
                continue;
            }

            report.Note(Invariant($"Dropped snapshot {Shown(snapshot.Id)} ({Shown(snapshot.Name)}): {problem} (L1 table offset 0x{snapshot.L1TableOffset:x}); the clusters only it used are freed"));
            report.Losses.Add(new DataLoss(snapshot.Id, 0, snapshot.DiskSize ?? metadata.Header.Header.Size, Invariant($"the snapshot was dropped: {problem} (L1 table offset 0x{snapshot.L1TableOffset:x})")));
            Changes++;
        }

        if (kept.Count == metadata.Snapshots.Count)
        {
            return;
        }

        // The smaller table goes to fresh space at the end of the file, then one header write switches to it.
        var bytes = new byte[kept.Sum(s => (long)s.StoredLength)];
        var position = 0;
        foreach (var snapshot in kept)
        {
            position += snapshot.Write(bytes.AsSpan(position));
        }

        var offset = 0L;
        if (bytes.Length > 0)
        {
            offset = AllocateAtEnd(_geometry.ClustersFor(bytes.Length));
            await _repairs.WriteAppendedAsync(offset, bytes, async, cancellationToken).ConfigureAwait(false);
            await _repairs.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await _repairs.SwitchSnapshotTableAsync(offset, kept, async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Mends one L1 table in <paramref name="entries"/>; returns the indexes changed, or null.</summary>
    private async ValueTask<List<int>?> MendL1Async(ulong[] entries, SnapshotTableEntry? snapshot, long diskSize, bool async, CancellationToken cancellationToken)
    {
        var where = snapshot is null ? "guest offset" : $"snapshot {Shown(snapshot.Id)} ({Shown(snapshot.Name)}) guest offset";
        List<int>? changed = null;
        var rangeBytes = (long)_geometry.L2Entries << _geometry.ClusterBits;
        for (var i = 0; i < entries.Length; i++)
        {
            var entry = new L1Entry(entries[i]);
            if (entry.Raw == 0)
            {
                continue;
            }

            var offset = entry.L2TableOffset;
            var range = Invariant($"{where} range [0x{i * rangeBytes:x}, 0x{(i + 1) * rangeBytes:x})");
            var problem = !_geometry.IsClusterAligned(offset) ? "not cluster aligned"
                : offset >= _dataEnd ? "past the end of the file"
                : null;
            if (problem is not null)
            {
                entries[i] = await DroppedTableAsync(async, cancellationToken).ConfigureAwait(false);
                Tell(Invariant($"Dropped the L2 table of {range} (L1 entry {i}: table offset 0x{offset:x} {problem}): the range {DroppedReads}"));
                var length = Math.Min(rangeBytes, diskSize - (i * rangeBytes));
                if (length > 0)
                {
                    AddLoss(new DataLoss(snapshot?.Id, i * rangeBytes, length, Invariant($"L1 entry {i}: L2 table offset 0x{offset:x} {problem}")));
                }

                (changed ??= []).Add(i);
                Changes++;
                continue;
            }

            if (offset == 0)
            {
                // Flags without a table: the range was unallocated and stays so.
                entries[i] = 0;
                report.Note(Invariant($"Cleared L1 entry {i} ({range}): it has no L2 table offset, only the bits 0x{entry.Raw:x}"));
                (changed ??= []).Add(i);
                Changes++;
                continue;
            }

            if (entry.ReservedBits != 0)
            {
                entries[i] = entry.Raw & ~L1Entry.ReservedMask;
                report.Note(Invariant($"Cleared reserved bits 0x{entry.ReservedBits:x} of L1 entry {i} ({range}); its L2 table at 0x{offset:x} is kept"));
                (changed ??= []).Add(i);
                Changes++;
            }

            await MendL2Async(offset, i * rangeBytes, snapshot?.Id, diskSize, where, async, cancellationToken).ConfigureAwait(false);
        }

        return changed;
    }

    /// <summary>The L1 entry for a dropped L2 table: unallocated, or a fresh table of zero entries.</summary>
    private async ValueTask<ulong> DroppedTableAsync(bool async, CancellationToken cancellationToken)
    {
        if (!DropsToZeroCluster)
        {
            return 0;
        }

        var table = new byte[_geometry.ClusterSize];
        for (var j = 0; j < _geometry.L2Entries; j++)
        {
            WriteDropped(table, j);
        }

        var offset = AllocateAtEnd(1);
        await _repairs.WriteAppendedAsync(offset, table, async, cancellationToken).ConfigureAwait(false);
        _mendedTables.Add(offset);
        return L1Entry.ForTable(offset, copied: true).Raw;
    }

    private async ValueTask MendL2Async(long tableOffset, long firstGuestOffset, string? snapshotId, long diskSize, string where, bool async, CancellationToken cancellationToken)
    {
        var table = new byte[_geometry.ClusterSize];
        await metadata.File.ReadZeroFilledAsync(tableOffset, table, async, cancellationToken).ConfigureAwait(false);
        var firstVisit = _mendedTables.Add(tableOffset);
        var changed = false;
        for (var j = 0; j < _geometry.L2Entries; j++)
        {
            // The name is formatted only when a message needs it: a snapshot's name may be 64 KiB.
            var guest = new Mapping(snapshotId, firstGuestOffset + ((long)j << _geometry.ClusterBits), diskSize, where);
            if (firstVisit)
            {
                changed |= MendEntry(table, j, guest);
            }

            changed |= await CountDataReferenceAsync(table, j, firstVisit, guest, async, cancellationToken).ConfigureAwait(false);
        }

        if (changed)
        {
            await WriteTableAsync(tableOffset, table, MetadataKind.ActiveL2 | MetadataKind.InactiveL2, "L2 table", async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Clusters at the end of the file: nothing references them, whatever the refcounts say.</summary>
    private long AllocateAtEnd(long clusters)
    {
        var offset = _geometry.RoundUpToCluster(_fileLength);
        _fileLength = offset + (clusters << _geometry.ClusterBits);
        _repairs.ExtendFile(_fileLength);
        return offset;
    }

    /// <summary>
    /// Writes a mended table back, unless it lies on other metadata: a hostile entry may name the
    /// header or a refcount block as its table, and mending it there would destroy what it names.
    /// </summary>
    private async ValueTask WriteTableAsync(long offset, byte[] bytes, MetadataKind own, string what, bool async, CancellationToken cancellationToken)
    {
        if (await _repairs.RewriteAsync(offset, bytes, own, async, cancellationToken).ConfigureAwait(false) is { } overlapped)
        {
            report.Note(Invariant($"Left the {what} at 0x{offset:x} as it was: it overlaps the {overlapped}, which mending it would overwrite"));
        }
    }

    private void Say(string message)
    {
        Tell(message);
        Changes++;
    }

    /// <summary>
    /// One line of the report per change, up to <see cref="MaxLines"/>: a hostile L1 table can
    /// name a million garbage entries, and a line each would cost more memory than the image.
    /// </summary>
    private void Tell(string message)
    {
        if (_told < MaxLines)
        {
            report.Note(message);
            _told++;
        }
        else
        {
            _unsaid++;
        }
    }

    /// <summary>Records lost guest bytes, merged with the previous range when it continues it (the reason of its start stays).</summary>
    private void AddLoss(DataLoss loss)
    {
        var losses = report.Losses;
        if (losses.Count > 0 && losses[^1] is var last && last.SnapshotId == loss.SnapshotId && last.GuestOffset + last.Length == loss.GuestOffset)
        {
            losses[^1] = last with { Length = last.Length + loss.Length, Reason = last.Reason.EndsWith(AndAfter, StringComparison.Ordinal) ? last.Reason : last.Reason + AndAfter };
            return;
        }

        losses.Add(loss);
    }

    /// <summary>A snapshot id or name as the report shows it: a hostile one may be 64 KiB, repeated in every line about its clusters.</summary>
    private static string Shown(string text) => text.Length <= 64 ? text : string.Concat(text.AsSpan(0, 64), "…");

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    /// <summary>One guest cluster of the active disk or of a snapshot, and how the report names it.</summary>
    private readonly record struct Mapping(string? SnapshotId, long GuestOffset, long DiskSize, string Where)
    {
        public override string ToString() => Invariant($"{Where} 0x{GuestOffset:x}");
    }
}
