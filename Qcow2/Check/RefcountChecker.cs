using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// QEMU's qcow2_check_refcounts: compares stored refcounts with computed references, repairs
/// leaks and corruptions when asked, rebuilds the refcount structure when a block is missing or
/// broken, and checks COPIED on the active tables. Caller holds the metadata lock and has flushed
/// the caches.
/// </summary>
internal sealed class RefcountChecker
{
    private readonly ImageMetadata _metadata;
    private readonly RefcountAllocator? _allocator;
    private readonly Geometry _geometry;
    private readonly CheckReport _report = new();
    private readonly CorruptionSignal _signal;
    private readonly StoredRefcounts _stored;
    private readonly bool _beyondQemu;

    /// <summary>A checker for one run over the image whose metadata is <paramref name="metadata"/>.</summary>
    /// <param name="metadata">The image's metadata.</param>
    /// <param name="allocator">Its refcount allocator when it is open for writing (repairs change refcounts through it).</param>
    /// <param name="beyondQemu">
    /// A rebuild places its blocks around those of the old table instead of failing QEMU's overlap
    /// check on them (the pass after <see cref="SalvageRepair"/>: the old structure is what is broken).
    /// </param>
    public RefcountChecker(ImageMetadata metadata, RefcountAllocator? allocator, bool beyondQemu = false)
    {
        _metadata = metadata;
        _allocator = allocator;
        _beyondQemu = beyondQemu;
        _geometry = metadata.Geometry;
        _signal = new CorruptionSignal(metadata, _report);
        _stored = new StoredRefcounts(metadata, _signal);
    }

    public async ValueTask<CheckResult> RunAsync(CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        var report = _report;
        long highest = 0;
        try
        {
            highest = await CheckAsync(fix, async, cancellationToken).ConfigureAwait(false);
        }
        catch (CheckAbortedException)
        {
            // QEMU returns -EIO here: the counters found so far stay, qemu-img prints no summary.
        }

        return new CheckResult
        {
            CheckErrors = report.CheckErrors,
            Corruptions = report.Corruptions,
            Leaks = report.Leaks,
            CorruptionsFixed = report.CorruptionsFixed,
            LeaksFixed = report.LeaksFixed,
            ImageEndOffset = (highest + 1) << _geometry.ClusterBits,
            TotalClusters = _geometry.ClustersFor(_metadata.Header.Header.Size),
            AllocatedClusters = report.Allocated,
            FragmentedClusters = report.Fragmented,
            CompressedClusters = report.Compressed,
            Messages = report.Messages,
            Failure = report.Failure,
        };
    }

    /// <summary>The whole check; returns the highest cluster in use.</summary>
    private async ValueTask<long> CheckAsync(CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        await _metadata.GetRefcountsLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var report = _report;
        if (ReferenceCounter.IsTooLarge(_geometry, _metadata.File.Length))
        {
            report.CheckErrors++; // QEMU: nb_clusters > INT_MAX -> -EFBIG
            throw report.Abort(reason: "File too large");
        }

        var stored = _stored;
        var counter = new ReferenceCounter(_metadata, report, _signal);
        await counter.CalculateAsync(stored.Table, (fix & CheckRepair.Errors) != 0, async, cancellationToken).ConfigureAwait(false);
        var beforeCompare = report.Counters;
        var (highest, rebuild) = await CompareAsync(counter.References, CheckRepair.None, async, cancellationToken).ConfigureAwait(false);
        rebuild |= counter.RebuildNeeded;

        if (rebuild && (fix & CheckRepair.Errors) != 0)
        {
            var old = report.Counters;
            report.Note(_beyondQemu ? "Rebuilding refcount structure around the old one (its clusters are freed afterwards)" : "Rebuilding refcount structure");
            await new RefcountRebuilder(_metadata, _allocator, report, _signal, _beyondQemu).RebuildAsync(counter.References.ToArray(), async, cancellationToken).ConfigureAwait(false);
            report.Corruptions = 0;
            report.Leaks = 0;
            counter = new ReferenceCounter(_metadata, report, _signal);
            await counter.CalculateAsync(stored.Table, fixErrors: false, async, cancellationToken).ConfigureAwait(false);
            var freshLeaks = 0;
            if ((fix & CheckRepair.Leaks) != 0)
            {
                // The old structure is now leaked: free it.
                var saved = report.Counters;
                report.Counters = default;
                bool stillBroken;
                (highest, stillBroken) = await CompareAsync(counter.References, CheckRepair.Leaks, async, cancellationToken).ConfigureAwait(false);
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
                report.CheckErrors++;
                throw report.Abort("ERROR need to rebuild refcount structures");
            }

            if (report.Leaks > 0 || report.Corruptions > 0)
            {
                report.Counters = beforeCompare;
                (highest, _) = await CompareAsync(counter.References, fix, async, cancellationToken).ConfigureAwait(false);
            }

            if ((fix & CheckRepair.Leaks) != 0)
            {
                await FreeLeaksBeyondEndAsync(counter, async, cancellationToken).ConfigureAwait(false);
            }
        }

        await CheckCopiedAsync(fix, async, cancellationToken).ConfigureAwait(false);
        return highest;
    }

    /// <summary>compare_refcounts: every cluster's stored refcount against its references.</summary>
    private async ValueTask<(long Highest, bool Rebuild)> CompareAsync(ReferenceCounts references, CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        var report = _report;
        long highest = 0;
        var rebuild = false;
        var blockEntries = _geometry.RefcountBlockEntries;
        for (long cluster = 0; cluster < references.Length; cluster++)
        {
            if ((cluster & (blockEntries - 1)) == 0 && IsEmptyRange(references, cluster, cluster + blockEntries))
            {
                cluster += blockEntries - 1; // nothing stored, nothing referenced: every comparison is 0 == 0
                continue;
            }

            if (await _stored.GetAsync(cluster, async, cancellationToken).ConfigureAwait(false) is not { } refcount)
            {
                report.CheckError($"Can't get refcount for cluster {cluster}: {CheckAbortedException.InputOutputError}");
                continue;
            }

            ulong computed = references[cluster];
            if (refcount > 0 || computed > 0)
            {
                highest = cluster;
            }

            if (refcount == computed)
            {
                continue;
            }

            var repair = false;
            if (refcount == 0)
            {
                rebuild = true;
            }
            else if (refcount > computed && (fix & CheckRepair.Leaks) != 0)
            {
                repair = true;
            }
            else if (refcount < computed && (fix & CheckRepair.Errors) != 0)
            {
                repair = true;
            }

            report.Note($"{(repair ? "Repairing" : refcount < computed ? "ERROR" : "Leaked")} cluster {cluster} refcount={refcount} reference={computed}");
            if (repair)
            {
                await SetRefcountAsync(cluster, refcount, computed, async, cancellationToken).ConfigureAwait(false);
                if (refcount > computed)
                {
                    report.LeaksFixed++;
                }
                else
                {
                    report.CorruptionsFixed++;
                }

                continue;
            }

            if (refcount < computed)
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
    /// Whether the clusters of one refcount block's range have no stored refcount (no block, or a
    /// block past the end of the file, which reads as zeros) and no reference. Skipping them keeps a
    /// check of a huge sparse file proportional to what the image uses.
    /// </summary>
    private bool IsEmptyRange(ReferenceCounts references, long first, long end)
    {
        var blockOffset = _stored.Table[first >> _geometry.RefcountBlockBits].BlockOffset;
        var storesNothing = blockOffset == 0 || (_geometry.IsClusterAligned(blockOffset) && blockOffset >= _metadata.File.Length);
        return storesNothing && references.NoneIn(first, end);
    }

    /// <summary>
    /// Frees clusters past the end of the file that have a refcount but no reference. QEMU's check
    /// only looks as far as the file reaches, so it neither reports nor repairs these (a crash can
    /// leave them: the refcount update reached the disk, the data and its mapping did not); they
    /// would surface as leaks once the file grows over them. Blocks the check found broken are
    /// left alone: their table entries are what is wrong, not the refcounts. So are clusters a table
    /// references past the end (a truncated file): what is wrong there is the missing data.
    /// </summary>
    private async ValueTask FreeLeaksBeyondEndAsync(ReferenceCounter counter, bool async, CancellationToken cancellationToken)
    {
        var table = _stored.Table;
        var fileLength = _metadata.File.Length;
        for (long cluster = counter.References.Length; cluster < table.CoveredClusters; cluster++)
        {
            var entry = table[cluster >> _geometry.RefcountBlockBits];
            if (entry.BlockOffset == 0 || entry.ReservedBits != 0 || !_geometry.IsClusterAligned(entry.BlockOffset) || entry.BlockOffset >= fileLength)
            {
                cluster = (((cluster >> _geometry.RefcountBlockBits) + 1) << _geometry.RefcountBlockBits) - 1; // nothing to free in its range
                continue;
            }

            var refcount = await _stored.GetAsync(cluster, async, cancellationToken).ConfigureAwait(false) ?? 0;
            if (refcount != 0 && !counter.IsReferencedPastEnd(cluster))
            {
                _report.Note($"Repairing cluster {cluster} refcount={refcount} reference=0 (past the end of the file)");
                await SetRefcountAsync(cluster, refcount, 0, async, cancellationToken).ConfigureAwait(false);
                _report.LeaksFixed++;
            }
        }
    }

    /// <summary>
    /// Changes a stored refcount from <paramref name="from"/> to <paramref name="to"/>. A 64-bit
    /// refcount may exceed what one signed delta can say, so a big change goes in several steps.
    /// </summary>
    private async ValueTask SetRefcountAsync(long cluster, ulong from, ulong to, bool async, CancellationToken cancellationToken)
    {
        while (from != to)
        {
            var step = from > to ? -(long)Math.Min(from - to, long.MaxValue) : (long)Math.Min(to - from, long.MaxValue);
            await (_allocator ?? throw new InvalidOperationException("Repairing refcounts needs the image open for writing.")).ChangeAsync(cluster, step, ClusterUse.Data, async, cancellationToken).ConfigureAwait(false);
            from = step < 0 ? from - (ulong)(-step) : from + (ulong)step;
        }
    }

    /// <summary>check_oflag_copied: COPIED must equal (refcount == 1) in the active tables.</summary>
    private async ValueTask CheckCopiedAsync(CheckRepair fix, bool async, CancellationToken cancellationToken)
    {
        var report = _report;
        var repair = (fix & CheckRepair.Errors) != 0
            || ((fix & CheckRepair.Leaks) != 0 && report.CheckErrors == 0 && report.Corruptions == 0 && report.Leaks == 0);
        var l1 = _metadata.ActiveL1;
        for (var i = 0; i < l1.Size; i++)
        {
            var l1Entry = l1[i];
            var l2Offset = (long)(l1Entry.Raw & L1Entry.OffsetMask);
            if (l2Offset == 0 || await _stored.GetAsync(l2Offset >> _geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) is not { } tableRefcount)
            {
                continue; // QEMU skips what it cannot read silently: the refcount pass reported it
            }

            if ((tableRefcount == 1) != l1Entry.IsCopied)
            {
                report.Corruptions++;
                report.Note($"{(repair ? "Repairing" : "ERROR")} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1Entry.Raw:x} refcount={tableRefcount}");
                if (repair)
                {
                    await l1.SetAsync(_metadata.File, i, l1Entry.WithCopied(tableRefcount == 1), async, cancellationToken).ConfigureAwait(false);
                    report.Corruptions--;
                    report.CorruptionsFixed++;
                }
            }

            if (l2Offset >= _metadata.File.Length)
            {
                continue; // reads as zeros in QEMU: no entries to check
            }

            await CheckCopiedInTableAsync(l2Offset, repair, async, cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask CheckCopiedInTableAsync(long l2Offset, bool repair, bool async, CancellationToken cancellationToken)
    {
        var report = _report;
        using var l2 = await _metadata.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
        var fixes = new List<(int Index, L2Entry Entry)>();
        for (var j = 0; j < _geometry.L2Entries; j++)
        {
            var entry = L2Table.ReadEntry(l2.Span, j, _geometry.ExtendedL2);
            var type = entry.GetClusterType(_geometry.ExtendedL2, _geometry.ExternalDataFile);
            if (type is not (ClusterType.Normal or ClusterType.ZeroAllocated))
            {
                continue;
            }

            ulong refcount = 1;
            if (!_geometry.ExternalDataFile)
            {
                if (await _stored.GetAsync(entry.HostOffset >> _geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) is not { } value)
                {
                    continue;
                }

                refcount = value;
            }

            if ((refcount == 1) != entry.IsCopied)
            {
                report.Corruptions++;
                report.Note($"{(repair ? "Repairing" : "ERROR")} OFLAG_COPIED data cluster: l2_entry={entry.Raw:x} refcount={refcount}");
                if (repair)
                {
                    fixes.Add((j, entry.WithCopied(refcount == 1)));
                }
            }
        }

        if (fixes.Count == 0)
        {
            return;
        }

        if (_metadata.FindOverlap(l2Offset, _geometry.ClusterSize, MetadataKind.ActiveL2) is { } overlapped)
        {
            await _signal.RaiseAsync($"Preventing invalid write on metadata (overlaps with {overlapped})", async, cancellationToken).ConfigureAwait(false);
            report.CheckErrors++;
            throw report.Abort($"ERROR: Could not write L2 table; metadata overlap check failed: {CheckAbortedException.InputOutputError}");
        }

        foreach (var (index, entry) in fixes)
        {
            L2Table.WriteEntry(l2.Span, index, _geometry.ExtendedL2, entry);
        }

        TableCache.MarkDirty(l2);
        report.Corruptions -= fixes.Count;
        report.CorruptionsFixed += fixes.Count;
    }
}
