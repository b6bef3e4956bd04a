using System.Buffers.Binary;
using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>A dirty image opened for repair stays dirty on close until a check repairs it clean.</summary>
    private bool _keepDirtyBit;

    /// <summary>An operation of this session failed with an I/O error: the dirty bit stays at close.</summary>
    private volatile bool _ioErrorSeen;

    /// <summary>Makes everything written so far durable: guest data, then refcounts, L2 and L1 tables.</summary>
    public void Flush()
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(FlushCoreAsync(async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Flush"/>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(FlushCoreAsync(async: true, cancellationToken));
    }

    /// <summary>
    /// Points the image at another backing file (or none) by rewriting the header only, like
    /// qemu-img rebase -u: guest data is not touched, so what shows through may change.
    /// </summary>
    /// <param name="name">New backing file name as it should be stored, or null to remove it.</param>
    /// <param name="format">Its format ("qcow2" or "raw"), or null to probe when opening.</param>
    public void SetBackingFile(string? name, string? format)
    {
        ThrowIfDisposed();
        ThrowIfNotWritable();

        SyncOver.Run(Guard(SetBackingFileCoreAsync(name, format, async: false, CancellationToken.None)));
    }

    private async ValueTask SetBackingFileCoreAsync(string? name, string? format, bool async, CancellationToken cancellationToken)
    {
        if (name is not null && (_core.Header.Header.Autoclear & AutoclearFeatures.RawExternalData) != 0)
        {
            throw new InvalidOperationException("An image whose data file is raw cannot have a backing file.");
        }

        // qemu-img rebase -u accepts this and leaves an image no one can open; refuse it even unsafely.
        if (name is not null && _core.File.Path is { } self && DefaultBackingFileResolver.TryResolvePath(name, self) is { } target && FileStorage.IsSameFile(target, self))
        {
            throw new InvalidOperationException($"'{name}' is {self} itself; an image cannot be its own backing file.");
        }

        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        IGuestDisk? backing = null;
        if (name is not null && _core.Options.BackingFiles == BackingFileMode.Open)
        {
            var chain = new ChainContext();
            chain.Enter(_core.File);
            backing = await OpenBackingAsync(name, format, _core.File.Path, _core.Options, chain, async, cancellationToken).ConfigureAwait(false);
        }

        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        await _core.RewriteHeaderAsync(_core.Header with { BackingFileName = name, BackingFormat = name is null ? null : format }, async, cancellationToken).ConfigureAwait(false);
        _core.Backing?.Dispose();
        _core.Backing = backing;
    }

    /// <summary>
    /// Checks the image the way qemu-img check does and, when asked, repairs it (the image must
    /// be writable to repair). Dirty and corrupt bits are cleared when a repair leaves it clean.
    /// <see cref="CheckRepair.All"/> goes past qemu-img's -r all where that leaves errors: it
    /// clears reserved bits and flags that cannot apply, and drops the mappings, L2 tables and
    /// snapshots that cannot be read; <see cref="CheckResult.Messages"/> says what changed and
    /// <see cref="CheckResult.Losses"/> which guest ranges lost their data.
    /// </summary>
    public CheckResult Check(CheckRepair repair = CheckRepair.None)
    {
        ThrowIfDisposed();
        return SyncOver.Run(CheckCoreAsync(repair, async: false, CancellationToken.None));
    }

    /// <inheritdoc cref="Check"/>
    public ValueTask<CheckResult> CheckAsync(CheckRepair repair = CheckRepair.None, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return CheckCoreAsync(repair, async: true, cancellationToken);
    }

    private async ValueTask<CheckResult> CheckCoreAsync(CheckRepair repair, bool async, CancellationToken cancellationToken)
    {
        if (repair != CheckRepair.None && !IsWritable)
        {
            throw new NotSupportedException("Repairing needs the image opened for writing.");
        }

        using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            return await CheckLockedAsync(repair, async, cancellationToken, salvage: true).ConfigureAwait(false);
        }
    }

    /// <param name="repair">What to repair.</param>
    /// <param name="async">Whether to run asynchronously.</param>
    /// <param name="cancellationToken">Cancels at I/O boundaries.</param>
    /// <param name="salvage">With <see cref="CheckRepair.All"/>, repair what qemu-img's -r all leaves broken (an explicit check, never an open's implicit repair).</param>
    private async ValueTask<CheckResult> CheckLockedAsync(CheckRepair repair, bool async, CancellationToken cancellationToken, bool salvage = false)
    {
        if (IsWritable)
        {
            await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        }

        var result = await new RefcountChecker(_core).RunAsync(repair, async, cancellationToken).ConfigureAwait(false);
        if (salvage && repair == CheckRepair.All && (result.Failure is not null || result.CheckErrors > 0 || result.Corruptions > 0))
        {
            result = await SalvageLockedAsync(result, async, cancellationToken).ConfigureAwait(false);
        }

        if (repair != CheckRepair.None)
        {
            await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
            if (result.Failure is null && result.CheckErrors == 0 && result.Corruptions == 0)
            {
                _keepDirtyBit = false;
                await SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty | IncompatibleFeatures.Corrupt, false, async, cancellationToken).ConfigureAwait(false);
                if (_core.RefcountManager is not null)
                {
                    ArmDirtyBit(); // the next change of this session marks the image again
                }
            }
        }

        return result;
    }

    /// <summary>
    /// After a QEMU-style -r all that left errors: mend or drop the mappings QEMU cannot repair,
    /// rebuild and repair the refcounts around them, then check again. The result carries the final
    /// counts; everything found and repaired on the way counts as fixed, every change is a message.
    /// </summary>
    private async ValueTask<CheckResult> SalvageLockedAsync(CheckResult first, bool async, CancellationToken cancellationToken)
    {
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        _core.RefcountCache.Clear();
        var report = new CheckReport();
        report.Note("Repairing what qemu-img check -r all leaves behind:");
        await new SalvageRepair(_core, report).RunAsync(async, cancellationToken).ConfigureAwait(false);
        var repaired = await new RefcountChecker(_core, beyondQemu: true).RunAsync(CheckRepair.All, async, cancellationToken).ConfigureAwait(false);
        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
        var final = await new RefcountChecker(_core).RunAsync(CheckRepair.None, async, cancellationToken).ConfigureAwait(false);
        return final with
        {
            CorruptionsFixed = first.CorruptionsFixed + Math.Max(0, first.Corruptions - final.Corruptions),
            LeaksFixed = first.LeaksFixed + Math.Max(0, first.Leaks - final.Leaks),
            Messages = [.. first.Messages, .. report.Messages, .. repaired.Messages, .. final.Messages],
            Losses = report.Losses,
        };
    }

    private async ValueTask FlushCoreAsync(bool async, CancellationToken cancellationToken)
    {
        if (!IsWritable)
        {
            return;
        }

        if (_core.CorruptionDetected is { } problem)
        {
            throw Qcow2Corruption.Create("image", $"it was marked corrupt and takes no more writes ({problem})");
        }

        using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
            foreach (var extension in _core.Extensions)
            {
                extension.Flush(new ExtensionHost(this, extension));
            }

            await CloseDirtyWindowAsync(async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// After a flush every metadata change of the session is on disk and consistent, so a crash
    /// from here on has nothing to repair: the dirty bit is cleared and armed again for the next
    /// change. It stays while lazy refcounts postpone refcount updates, after an I/O error (which
    /// may have leaked clusters) and while a repair has not come out clean. Caller holds the
    /// metadata lock.
    /// </summary>
    private async ValueTask CloseDirtyWindowAsync(bool async, CancellationToken cancellationToken)
    {
        if (_core.RefcountManager is { BeforeFirstChange: null } && !_core.LazyRefcounts && !_keepDirtyBit && !_ioErrorSeen
            && (_core.Header.Header.Incompatible & IncompatibleFeatures.Dirty) != 0)
        {
            await SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty, false, async, cancellationToken).ConfigureAwait(false);
            ArmDirtyBit();
        }
    }

    /// <summary>
    /// Data first (so no table can point at unwritten data), then refcount blocks and L2 tables in
    /// their dependency order, then the L1 entries of new L2 tables, each step flushed.
    /// </summary>
    private async ValueTask FlushLockedAsync(bool async, CancellationToken cancellationToken)
    {
        if (_core.PendingCopiedFixups.Count > 0)
        {
            await ResolvePendingCopiedLockedAsync(async, cancellationToken).ConfigureAwait(false);
        }

        if (_core.Geometry.ExternalDataFile)
        {
            await _core.DataFile.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _core.L2Cache.FlushStorageBeforeWrite = false;
        await _core.RefcountCache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        if (_core.RefcountManager is { } refcounts)
        {
            await refcounts.WriteTableEntriesAsync(async, cancellationToken).ConfigureAwait(false); // after a failed write
        }

        await _core.L2Cache.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        if (_core.ActiveL1.HasDirtyEntries)
        {
            await _core.ActiveL1.WriteDirtyAsync(_core.File, async, cancellationToken).ConfigureAwait(false);
            await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        _core.RefcountManager?.ReleaseQuarantine(); // every unmapping of a freed cluster is durable now
    }

    /// <summary>
    /// Runs a public operation that changes the image. When it fails with an I/O error, the steps
    /// it completed may have left clusters referenced by refcounts but by no table (a leak); the
    /// session then keeps the dirty bit at close, so the next read-write open (ours or QEMU's)
    /// repairs them.
    /// </summary>
    private ValueTask Guard(ValueTask operation) => operation.IsCompletedSuccessfully ? operation : GuardSlowAsync(operation);

    /// <inheritdoc cref="Guard(ValueTask)"/>
    private ValueTask<T> Guard<T>(ValueTask<T> operation) => operation.IsCompletedSuccessfully ? operation : GuardSlowAsync(operation);

    private async ValueTask GuardSlowAsync(ValueTask operation)
    {
        try
        {
            await operation.ConfigureAwait(false);
        }
        catch (IOException)
        {
            _ioErrorSeen = true;
            throw;
        }
    }

    private async ValueTask<T> GuardSlowAsync<T>(ValueTask<T> operation)
    {
        try
        {
            return await operation.ConfigureAwait(false);
        }
        catch (IOException)
        {
            _ioErrorSeen = true;
            throw;
        }
    }

    private async ValueTask CloseCoreAsync(bool async, CancellationToken cancellationToken)
    {
        if (!IsWritable || _core.RefcountManager is null || _core.CorruptionDetected is not null)
        {
            return; // after a refused metadata overwrite nothing more is written, as after a crash
        }

        using (await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            foreach (var extension in _core.Extensions)
            {
                extension.Close(new ExtensionHost(this, extension));
            }

            await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
            if (!_keepDirtyBit && !_ioErrorSeen)
            {
                await SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty, false, async, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Read-write open, as QEMU does it: clear auto-clear bits no loaded code maintains, mark
    /// persistent bitmaps in use (writes are not tracked in them), repair a dirty image, and arm
    /// lazy refcounts to set the dirty bit before the first postponed refcount update.
    /// </summary>
    private async ValueTask PrepareForWritingAsync(bool deferExtensions, bool async, CancellationToken cancellationToken)
    {
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var header = _core.Header;
        var maintained = AutoclearFeatures.RawExternalData | AutoclearFeatures.Bitmaps;
        foreach (var extension in _core.Extensions)
        {
            maintained |= (AutoclearFeatures)(1UL << extension.AutoclearBit);
        }

        if ((header.Header.Autoclear & ~maintained) != 0)
        {
            await _core.RewriteHeaderAsync(header with { Header = header.Header with { Autoclear = header.Header.Autoclear & maintained } }, async, cancellationToken).ConfigureAwait(false);
        }

        if (!_core.Options.ForRepair)
        {
            await MarkBitmapsInUseAsync(async, cancellationToken).ConfigureAwait(false); // a repair writes no guest data: bitmaps stay true
        }

        var table = await _core.GetRefcountsLockedAsync(async, cancellationToken).ConfigureAwait(false);
        _core.RefcountManager = new RefcountManager(_core.File, _core.Geometry, table, _core.RefcountCache, _core.L2Cache, _core.Reservations, _core.Overlap, CommitRefcountTableAsync, OnClusterFreed, _core.NoteFileEnd);
        _core.Tables = new ActiveTables(_core.File, _core.Geometry, _core.ActiveL1, _core.L2Cache, _core.RefcountCache, _core.RefcountManager, () => !_core.LazyRefcounts);
        if (deferExtensions)
        {
            _core.Allocator = FreshClusterAllocator.Instance;
        }
        else
        {
            OpenExtensionsAndAllocator();
        }

        if ((_core.Header.Header.Incompatible & IncompatibleFeatures.Dirty) != 0 && _core.Options.ForRepair)
        {
            _keepDirtyBit = true; // until a repair leaves the image clean; Check reports what is wrong
        }
        else if ((_core.Header.Header.Incompatible & IncompatibleFeatures.Dirty) != 0)
        {
            var result = await CheckLockedAsync(CheckRepair.All, async, cancellationToken).ConfigureAwait(false);
            if (result.Failure is not null || result.CheckErrors > 0 || result.Corruptions > 0)
            {
                throw Qcow2Corruption.Create("header", $"could not repair the dirty image ({result.CheckErrors} check errors, {result.Corruptions} corruptions remain{(result.Failure is null ? string.Empty : ", check failed: " + result.Failure)}): {string.Join("; ", result.Messages.Take(5))}");
            }
        }

        ArmDirtyBit();
    }

    /// <summary>
    /// Sets the dirty bit durably before the first metadata change since the last flush; the next
    /// flush (<see cref="CloseDirtyWindowAsync"/>) or the close clears it. Lazy refcounts need it
    /// (refcount updates are postponed), and so does everyone else: a shared cluster's COPIED flag
    /// and refcount live in two tables that cannot change in one write, and changes cut by a crash
    /// leak clusters. With the bit set, QEMU's next read-write open and ours repair both, so a
    /// crash never leaves more than the bit behind; a crash after a flush leaves a clean image.
    /// Costs two header writes and three flushes per flush that follows metadata changes.
    /// v2 images have no dirty bit.
    /// </summary>
    private void ArmDirtyBit()
    {
        _core.RefcountManager!.BeforeFirstChange = (a, c) => SetIncompatibleBitsAsync(IncompatibleFeatures.Dirty, true, a, c);
    }

    /// <summary>Opens the extensions, then attaches the allocator (the option's, else an extension's, else fresh clusters). Caller holds the metadata lock.</summary>
    private void OpenExtensionsAndAllocator()
    {
        OpenExtensions();
        _core.Allocator = _core.Options.Allocator ?? _core.Extensions.Select(e => e.Allocator).FirstOrDefault(a => a is not null) ?? FreshClusterAllocator.Instance;
        _core.Allocator.Attach(new AllocatorContext(_core));
    }

    /// <summary>Hands every extension its header extension payload and whether its auto-clear bit survived.</summary>
    private void OpenExtensions()
    {
        foreach (var extension in _core.Extensions)
        {
            var stored = _core.Header.OtherExtensions.FirstOrDefault(e => e.Type == extension.HeaderExtensionType);
            var bitSet = ((ulong)_core.Header.Header.Autoclear & (1UL << extension.AutoclearBit)) != 0;
            extension.Open(new ExtensionHost(this, extension), stored?.Data, bitSet);
        }
    }

    /// <summary>
    /// Runs <paramref name="action"/> under the metadata lock, for extension code that must change
    /// its own state consistently with the image's mappings (not for application code: calling
    /// image methods inside would deadlock).
    /// </summary>
    internal T RunLocked<T>(Func<T> action)
    {
        ThrowIfDisposed();
        using (SyncOver.Run(_core.MetadataLock.AcquireAsync(async: false, CancellationToken.None)))
        {
            return action();
        }
    }

    /// <summary>The loaded extension of type <typeparamref name="T"/>, if any.</summary>
    public T? GetExtension<T>()
        where T : class, IImageExtension => _core.Extensions.OfType<T>().FirstOrDefault();

    private async ValueTask MarkBitmapsInUseAsync(bool async, CancellationToken cancellationToken)
    {
        if (_core.Bitmaps.Count == 0 || _core.Header.Bitmaps is not { } extension)
        {
            return;
        }

        var position = extension.DirectoryOffset;
        var updated = new List<BitmapDirectoryEntry>(_core.Bitmaps.Count);
        foreach (var bitmap in _core.Bitmaps)
        {
            if ((bitmap.Flags & BitmapFlags.InUse) == 0)
            {
                var flags = new byte[4];
                BinaryPrimitives.WriteUInt32BigEndian(flags, (uint)(bitmap.Flags | BitmapFlags.InUse));
                await _core.File.WriteAsync(position + BitmapDirectoryEntry.FlagsOffset, flags, async, cancellationToken).ConfigureAwait(false);
            }

            updated.Add(bitmap with { Flags = bitmap.Flags | BitmapFlags.InUse });
            position += bitmap.StoredLength;
        }

        await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _core.Bitmaps = updated;
    }

    /// <summary>Sets or clears incompatible bits with one small durable header write (v3 only).</summary>
    private async ValueTask SetIncompatibleBitsAsync(IncompatibleFeatures bits, bool set, bool async, CancellationToken cancellationToken)
    {
        var header = _core.Header.Header;
        var updated = set ? header.Incompatible | bits : header.Incompatible & ~bits;
        if (header.Version < 3 || updated == header.Incompatible)
        {
            return;
        }

        if (set)
        {
            // Nothing may reach the disk under the dirty bit's protection before the bit itself.
            await _core.File.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        await _core.WriteHeaderFieldsAsync(header with { Incompatible = updated }, Qcow2Header.IncompatibleFeaturesOffset, 8, async, cancellationToken).ConfigureAwait(false);
    }

    private ValueTask CommitRefcountTableAsync(long offset, int clusters, bool async, CancellationToken cancellationToken) =>
        _core.WriteHeaderFieldsAsync(_core.Header.Header with { RefcountTableOffset = offset, RefcountTableClusters = clusters }, Qcow2Header.RefcountTableOffsetOffset, 12, async, cancellationToken);

    /// <summary>A cluster's refcount reached zero: drop cached copies and tell the allocator about data.</summary>
    private void OnClusterFreed(long cluster, ClusterUse use)
    {
        var offset = cluster << _core.Geometry.ClusterBits;
        _core.L2Cache.Forget(offset);
        _core.RefcountCache.Forget(offset);
        if (use is ClusterUse.Data or ClusterUse.Compressed)
        {
            _core.Decompressed.Invalidate();
            _core.Referrers.Forget(offset);
            _core.Allocator.OnFreed(offset);
        }
    }

    /// <summary>
    /// Finds the one remaining referrer of each shared cluster that dropped to refcount 1 without
    /// a known referrer, by scanning the active L2 tables once, and sets its COPIED flag.
    /// </summary>
    private async ValueTask ResolvePendingCopiedLockedAsync(bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var pending = _core.PendingCopiedFixups;
        var found = new Dictionary<long, List<long>>();
        for (long l1Index = 0; l1Index < _core.ActiveL1.Size; l1Index++)
        {
            var l2Offset = _core.ActiveL1[l1Index].L2TableOffset;
            if (l2Offset == 0)
            {
                continue;
            }

            using var table = await _core.L2Cache.GetAsync(l2Offset, async, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < geometry.L2Entries; i++)
            {
                var entry = L2Table.ReadEntry(table.Span, i, geometry.ExtendedL2);
                if (entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile) is ClusterType.Normal or ClusterType.ZeroAllocated
                    && pending.Contains(entry.HostOffset))
                {
                    var guest = (l1Index << geometry.L2CoverageBits) + ((long)i << geometry.ClusterBits);
                    if (!found.TryGetValue(entry.HostOffset, out var guests))
                    {
                        found[entry.HostOffset] = guests = [];
                    }

                    guests.Add(guest);
                }
            }
        }

        foreach (var (host, guests) in found)
        {
            if (guests.Count == 1 && await _core.RefcountManager!.GetAsync(host >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false) == 1)
            {
                var (entry, bitmap) = await _core.Tables!.ReadEntryAsync(guests[0], async, cancellationToken).ConfigureAwait(false);
                using var writable = await _core.Tables.GetWritableAsync(guests[0], async, cancellationToken).ConfigureAwait(false);
                await _core.Tables.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
                _core.Tables.SetEntry(writable, guests[0], entry.WithCopied(true), bitmap);
            }
        }

        pending.Clear();
    }

    /// <summary>What the allocator may ask of this image.</summary>
    private sealed class AllocatorContext(ImageCore core) : IClusterAllocatorContext
    {
        public int ClusterSize => core.Geometry.ClusterSize;

        public ulong MaxRefcount => core.Geometry.MaxRefcount;

        public ulong GetRefcount(long hostOffset) => core.GetRefcountLocked(hostOffset);

        public void ReadHost(long hostOffset, Span<byte> buffer)
        {
            var read = core.DataFile.Read(hostOffset, buffer);
            buffer[read..].Clear();
        }
    }
}
