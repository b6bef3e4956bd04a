using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// QEMU's qcow2_check_refcounts: compares stored refcounts with computed references, repairs
/// leaks and corruptions when asked, rebuilds the refcount structure when a block is missing or
/// broken, and checks COPIED on the active tables. Caller holds the metadata lock and has flushed
/// the caches.
/// </summary>
internal sealed class RefcountChecker(ImageCore core)
{
    private readonly Geometry _geometry = core.Geometry;

    public async ValueTask<CheckResult> RunAsync(CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        var report = new CheckReport();
        var table = core.RefcountManager?.Table ?? await core.GetRefcountsLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var counter = new ReferenceCounter(core, report);
        await counter.CalculateAsync(table, (fix & CheckRepair.Errors) != 0, async, cancellationToken).ConfigureAwait(false);
        var beforeCompare = report.Counters;
        var (highest, rebuild) = await CompareAsync(table, counter.References, report, CheckRepair.None, async, cancellationToken).ConfigureAwait(false);
        rebuild |= counter.RebuildNeeded;

        if (rebuild && (fix & CheckRepair.Errors) != 0)
        {
            var old = report.Counters;
            report.Note("Rebuilding refcount structure");
            await RebuildAsync(counter.References, async, cancellationToken).ConfigureAwait(false);
            report.Corruptions = 0;
            report.Leaks = 0;
            table = core.RefcountManager!.Table;
            counter = new ReferenceCounter(core, report);
            await counter.CalculateAsync(table, fixErrors: false, async, cancellationToken).ConfigureAwait(false);
            var freshLeaks = 0;
            if ((fix & CheckRepair.Leaks) != 0)
            {
                // The old structure is now leaked: free it.
                var saved = report.Counters;
                report.Counters = default;
                bool stillBroken;
                (highest, stillBroken) = await CompareAsync(table, counter.References, report, CheckRepair.Leaks, async, cancellationToken).ConfigureAwait(false);
                if (stillBroken)
                {
                    report.Note("ERROR rebuilt refcount structure is still broken");
                }

                freshLeaks = report.Leaks;
                report.Counters = saved;
            }

            if (report.Corruptions < old.Corruptions)
            {
                report.CorruptionsFixed += old.Corruptions - report.Corruptions;
            }

            if (report.Leaks < old.Leaks)
            {
                report.LeaksFixed += old.Leaks - report.Leaks;
            }

            report.Leaks += freshLeaks;
        }
        else if (fix != CheckRepair.None)
        {
            if (rebuild)
            {
                report.CheckError("ERROR need to rebuild refcount structures");
                return Result(report, highest);
            }

            if (report.Leaks > 0 || report.Corruptions > 0)
            {
                report.Counters = beforeCompare;
                (highest, _) = await CompareAsync(table, counter.References, report, fix, async, cancellationToken).ConfigureAwait(false);
            }

            if ((fix & CheckRepair.Leaks) != 0)
            {
                await FreeLeaksBeyondEndAsync(table, counter.References.Length, report, async, cancellationToken).ConfigureAwait(false);
            }
        }

        await CheckCopiedAsync(table, report, fix, async, cancellationToken).ConfigureAwait(false);
        return Result(report, highest);
    }

    private CheckResult Result(CheckReport report, long highest) => new()
    {
        CheckErrors = report.CheckErrors,
        Corruptions = report.Corruptions,
        Leaks = report.Leaks,
        CorruptionsFixed = report.CorruptionsFixed,
        LeaksFixed = report.LeaksFixed,
        ImageEndOffset = (highest + 1) << _geometry.ClusterBits,
        TotalClusters = _geometry.ClustersFor(core.Header.Header.Size),
        AllocatedClusters = report.Allocated,
        FragmentedClusters = report.Fragmented,
        CompressedClusters = report.Compressed,
        Messages = report.Messages,
    };

    /// <summary>compare_refcounts: every cluster's stored refcount against its references.</summary>
    private async ValueTask<(long Highest, bool Rebuild)> CompareAsync(RefcountTable table, uint[] references, CheckReport report, CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        long highest = 0;
        var rebuild = false;
        for (long cluster = 0; cluster < references.Length; cluster++)
        {
            ulong stored;
            try
            {
                stored = await table.GetAsync(cluster, long.MaxValue, async, cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidDataException error)
            {
                report.CheckError($"Can't get refcount for cluster {cluster}: {error.Message}");
                continue;
            }

            ulong computed = references[cluster];
            if (stored > 0 || computed > 0)
            {
                highest = cluster;
            }

            if (stored == computed)
            {
                continue;
            }

            var repair = false;
            if (stored == 0)
            {
                rebuild = true;
            }
            else if (stored > computed && (fix & CheckRepair.Leaks) != 0)
            {
                repair = true;
            }
            else if (stored < computed && (fix & CheckRepair.Errors) != 0)
            {
                repair = true;
            }

            report.Note($"{(repair ? "Repairing" : stored < computed ? "ERROR" : "Leaked")} cluster {cluster} refcount={stored} reference={computed}");
            if (repair)
            {
                await core.RefcountManager!.ChangeAsync(cluster, (long)computed - (long)stored, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                if (stored > computed)
                {
                    report.LeaksFixed++;
                }
                else
                {
                    report.CorruptionsFixed++;
                }

                continue;
            }

            if (stored < computed)
            {
                report.Corruptions++;
            }
            else
            {
                report.Leaks++;
            }
        }

        return (highest, rebuild);
    }

    /// <summary>
    /// Frees clusters past the end of the file that have a refcount but no reference. QEMU's check
    /// only looks as far as the file reaches, so it neither reports nor repairs these (a crash can
    /// leave them: the refcount update reached the disk, the data and its mapping did not); they
    /// would surface as leaks once the file grows over them.
    /// </summary>
    private async ValueTask FreeLeaksBeyondEndAsync(RefcountTable table, long firstCluster, CheckReport report, bool async, CancellationToken cancellationToken)
    {
        for (var cluster = firstCluster; cluster < table.CoveredClusters; cluster++)
        {
            if (table.BlockOffsetFor(cluster, long.MaxValue) == 0)
            {
                cluster = (((cluster >> _geometry.RefcountBlockBits) + 1) << _geometry.RefcountBlockBits) - 1; // no block: nothing allocated in its range
                continue;
            }

            var stored = await table.GetAsync(cluster, long.MaxValue, async, cancellationToken).ConfigureAwait(false);
            if (stored != 0)
            {
                report.Note($"Repairing cluster {cluster} refcount={stored} reference=0 (past the end of the file)");
                await core.RefcountManager!.ChangeAsync(cluster, -(long)stored, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
                report.LeaksFixed++;
            }
        }
    }

    /// <summary>check_oflag_copied: COPIED must equal (refcount == 1) in the active tables.</summary>
    private async ValueTask CheckCopiedAsync(RefcountTable table, CheckReport report, CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        var repair = (fix & CheckRepair.Errors) != 0
            || ((fix & CheckRepair.Leaks) != 0 && report.CheckErrors == 0 && report.Corruptions == 0 && report.Leaks == 0);
        var l1 = core.ActiveL1;
        for (var i = 0; i < l1.Size; i++)
        {
            var l1Entry = l1[i];
            var l2Offset = (long)(l1Entry.Raw & L1Entry.OffsetMask);
            if (l2Offset == 0 || !TryGetRefcount(table, l2Offset, out var tableRefcount, cancellationToken))
            {
                continue;
            }

            if ((tableRefcount == 1) != l1Entry.IsCopied)
            {
                report.Corruptions++;
                report.Note($"{(repair ? "Repairing" : "ERROR")} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1Entry.Raw:x} refcount={tableRefcount}");
                if (repair)
                {
                    await l1.SetAsync(core.File, i, l1Entry.WithCopied(tableRefcount == 1), async, cancellationToken).ConfigureAwait(false);
                    report.Corruptions--;
                    report.CorruptionsFixed++;
                }
            }

            TableHandle l2;
            try
            {
                l2 = await core.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidDataException error)
            {
                report.CheckError($"ERROR: Could not read L2 table: {error.Message}");
                return;
            }

            using (l2)
            {
                var dirty = 0;
                for (var j = 0; j < _geometry.L2Entries; j++)
                {
                    var entry = L2Table.ReadEntry(l2.Span, j, _geometry.ExtendedL2);
                    var type = entry.GetClusterType(_geometry.ExtendedL2, _geometry.ExternalDataFile);
                    if (type is not (ClusterType.Normal or ClusterType.ZeroAllocated))
                    {
                        continue;
                    }

                    ulong refcount = 1;
                    if (!_geometry.ExternalDataFile && !TryGetRefcount(table, entry.HostOffset, out refcount, cancellationToken))
                    {
                        continue;
                    }

                    if ((refcount == 1) != entry.IsCopied)
                    {
                        report.Corruptions++;
                        report.Note($"{(repair ? "Repairing" : "ERROR")} OFLAG_COPIED data cluster: l2_entry={entry.Raw:x} refcount={refcount}");
                        if (repair)
                        {
                            L2Table.WriteEntry(l2.Span, j, _geometry.ExtendedL2, entry.WithCopied(refcount == 1));
                            dirty++;
                        }
                    }
                }

                if (dirty > 0)
                {
                    TableCache.MarkDirty(l2);
                    report.Corruptions -= dirty;
                    report.CorruptionsFixed += dirty;
                }
            }
        }
    }

    /// <summary>A refcount, or false when its block cannot be read (QEMU then skips the entry silently).</summary>
    private bool TryGetRefcount(RefcountTable table, long offset, out ulong refcount, CancellationToken cancellationToken)
    {
        try
        {
            refcount = SyncOver.Run(table.GetAsync(offset >> _geometry.ClusterBits, long.MaxValue, async: false, cancellationToken));
            return true;
        }
        catch (InvalidDataException)
        {
            refcount = 0;
            return false;
        }
    }

    /// <summary>
    /// Writes a complete new refcount structure from the computed references (rebuild_refcount_structure):
    /// the table and every needed block go into one area past everything in use, and the blocks
    /// also count the area itself. The old structure is left behind and freed as leaks afterwards.
    /// </summary>
    private async ValueTask RebuildAsync(uint[] references, bool async, CancellationToken cancellationToken)
    {
        var file = core.File;
        var blockBits = _geometry.RefcountBlockBits;
        var entriesPerCluster = _geometry.ClusterSize / Qcow2Layout.RefcountTableEntrySize;
        var dataBlocks = new SortedSet<long>();
        for (long cluster = 0; cluster < references.Length; cluster++)
        {
            if (references[cluster] != 0)
            {
                dataBlocks.Add(cluster >> blockBits);
                cluster = (((cluster >> blockBits) + 1) << blockBits) - 1;
            }
        }

        var areaStart = Math.Max(Math.Max(references.Length, _geometry.ClustersFor(file.Length)), core.Reservations.HighestEnd());
        long tableClusters = 1, blockCount = 0;
        SortedSet<long> blocks;
        while (true)
        {
            blocks = new SortedSet<long>(dataBlocks);
            for (var b = areaStart >> blockBits; b <= (areaStart + tableClusters + blockCount - 1) >> blockBits; b++)
            {
                blocks.Add(b);
            }

            var neededTable = ((blocks.Max + 1) + entriesPerCluster - 1) / entriesPerCluster;
            if (blocks.Count == blockCount && neededTable <= tableClusters)
            {
                break;
            }

            blockCount = blocks.Count;
            tableClusters = Math.Max(tableClusters, neededTable);
        }

        if (tableClusters * _geometry.ClusterSize > Qcow2Layout.MaxRefcountTableBytes)
        {
            throw new InvalidOperationException("The rebuilt refcount table would exceed QEMU's 8 MiB limit.");
        }

        var areaEnd = areaStart + tableClusters + blockCount;
        var entries = new ulong[tableClusters * entriesPerCluster];
        var next = areaStart + tableClusters;
        var block = new byte[_geometry.ClusterSize];
        foreach (var blockIndex in blocks)
        {
            var blockOffset = next++ << _geometry.ClusterBits;
            entries[blockIndex] = (ulong)blockOffset;
            Array.Clear(block);
            var first = blockIndex << blockBits;
            for (var i = 0; i < _geometry.RefcountBlockEntries; i++)
            {
                var cluster = first + i;
                ulong value = cluster < references.Length ? references[cluster] : 0;
                if (cluster >= areaStart && cluster < areaEnd)
                {
                    value++;
                }

                if (value != 0)
                {
                    RefcountBlock.Set(block, i, _geometry.RefcountOrder, Math.Min(value, _geometry.MaxRefcount));
                }
            }

            await file.WriteAsync(blockOffset, block, async, cancellationToken).ConfigureAwait(false);
        }

        var tableOffset = areaStart << _geometry.ClusterBits;
        var replacement = new RefcountTable(_geometry, core.RefcountCache, tableOffset, (int)tableClusters, entries);
        await file.WriteAsync(tableOffset, replacement.Encode(), async, cancellationToken).ConfigureAwait(false);
        await file.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        core.NoteFileEnd(areaEnd << _geometry.ClusterBits);
        await core.RefcountCache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        core.RefcountCache.Clear();
        var header = core.Header.Header with { RefcountTableOffset = tableOffset, RefcountTableClusters = (int)tableClusters };
        await core.WriteHeaderFieldsAsync(header, Qcow2Header.RefcountTableOffsetOffset, 12, async, cancellationToken).ConfigureAwait(false);
        core.RefcountManager!.Table.Replace(tableOffset, (int)tableClusters, entries);
        core.RefcountManager.ResetAllocationHints();
    }
}
