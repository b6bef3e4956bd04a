using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

// Operations on the whole image: thin public wrappers over SnapshotOperations, Resizer,
// ChainOperations and ImageChecker.
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
        return SnapshotOperations.Find(_session.Metadata.Snapshots, key, lookup);
    }

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

    /// <summary>
    /// Grows the disk and preallocates the new part (qemu-img resize --preallocation): metadata
    /// gives each new cluster its entry and host cluster, falloc also reserves the disk space, full
    /// writes zeros.
    /// </summary>
    /// <exception cref="InvalidOperationException">The new size is smaller (preallocation only grows).</exception>
    public void Resize(long newSize, Preallocation preallocation)
    {
        ThrowIfDisposed();
        if (preallocation == Preallocation.Off)
        {
            Resize(newSize);
            return;
        }

        if (newSize < Size)
        {
            throw new InvalidOperationException("Preallocation can only be used for growing images");
        }

        var oldSize = Size;
        SyncOver.Run(Guard(ResizeCoreAsync(newSize, allowShrink: false, async: false, CancellationToken.None)));
        SyncOver.Run(Guard(Writes.Resizer.PreallocateAsync(preallocation, async: false, CancellationToken.None, from: oldSize)));
    }

    /// <inheritdoc cref="Resize(long, bool)"/>
    public ValueTask ResizeAsync(long newSize, bool allowShrink = false, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(ResizeCoreAsync(newSize, allowShrink, async: true, cancellationToken));
    }

    /// <summary>
    /// Writes what this overlay holds into its backing file (qemu-img commit): allocated ranges are
    /// copied, zero ranges become zeros, the backing file grows when it is smaller, and afterwards
    /// the overlay is emptied unless <paramref name="keepOverlay"/> (qemu-img commit -d).
    /// </summary>
    /// <param name="keepOverlay">Leave the overlay's data in place.</param>
    /// <param name="backingOptions">Options to open the backing file read-write with (e.g. with dedup); null for defaults.</param>
    /// <param name="progress">Receives the fraction done.</param>
    /// <exception cref="InvalidOperationException">The image has no backing file.</exception>
    public void Commit(bool keepOverlay = false, Qcow2OpenOptions? backingOptions = null, IProgress<double>? progress = null)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(CommitCoreAsync(keepOverlay, backingOptions, progress, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Commit"/>
    public ValueTask CommitAsync(bool keepOverlay = false, Qcow2OpenOptions? backingOptions = null, IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(CommitCoreAsync(keepOverlay, backingOptions, progress, async: true, cancellationToken));
    }

    /// <summary>
    /// Points the image at another backing file (or none) without changing what the guest sees
    /// (qemu-img rebase): wherever the image itself holds nothing and the old and new backing
    /// files differ, the old content is copied into the image first. With
    /// <paramref name="unsafeRebase"/> only the header changes (qemu-img rebase -u).
    /// </summary>
    /// <param name="backingFile">The new backing file name as it should be stored (relative names resolve against the image's directory), or null for none.</param>
    /// <param name="backingFormat">Its format ("qcow2" or "raw"), or null to probe it.</param>
    /// <param name="unsafeRebase">Only rewrite the name; what shows through may change.</param>
    /// <param name="progress">Receives the fraction done.</param>
    public void Rebase(string? backingFile, string? backingFormat, bool unsafeRebase = false, IProgress<double>? progress = null)
    {
        ThrowIfDisposed();
        SyncOver.Run(Guard(RebaseCoreAsync(backingFile, backingFormat, unsafeRebase, progress, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Rebase"/>
    public ValueTask RebaseAsync(string? backingFile, string? backingFormat, bool unsafeRebase = false, IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Guard(RebaseCoreAsync(backingFile, backingFormat, unsafeRebase, progress, async: true, cancellationToken));
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

    private SnapshotTableEntry FindSnapshotOrThrow(string key, SnapshotLookup lookup) =>
        FindSnapshot(key, lookup) ?? throw new KeyNotFoundException(lookup switch
        {
            SnapshotLookup.Id => $"The image has no snapshot with id '{key}'.",
            SnapshotLookup.Name => $"The image has no snapshot with name '{key}'.",
            _ => $"The image has no snapshot with id or name '{key}'.",
        });

    private ValueTask<SnapshotTableEntry> CreateSnapshotCoreAsync(string name, bool async, CancellationToken cancellationToken) =>
        Writes.Snapshots.CreateAsync(name, async, cancellationToken);

    private ValueTask ApplySnapshotCoreAsync(string key, SnapshotLookup lookup, bool async, CancellationToken cancellationToken) =>
        Writes.Snapshots.ApplyAsync(key, lookup, async, cancellationToken);

    private ValueTask DeleteSnapshotCoreAsync(string key, SnapshotLookup lookup, bool async, CancellationToken cancellationToken) =>
        Writes.Snapshots.DeleteAsync(key, lookup, async, cancellationToken);

    /// <summary>Empties the active disk (commit's last step).</summary>
    internal ValueTask MakeEmptyCoreAsync(bool async, CancellationToken cancellationToken) =>
        Writes.Snapshots.MakeEmptyAsync(async, cancellationToken);

    /// <summary>Resizes; <paramref name="zeroNewBytes"/> false lets a new image's bytes show its backing file.</summary>
    internal ValueTask ResizeCoreAsync(long newSize, bool allowShrink, bool async, CancellationToken cancellationToken, bool zeroNewBytes = true) =>
        Writes.Resizer.ResizeAsync(newSize, allowShrink, zeroNewBytes, async, cancellationToken);

    /// <summary>Preallocates a new image (create -o preallocation).</summary>
    internal ValueTask PreallocateCoreAsync(Preallocation mode, bool async, CancellationToken cancellationToken) =>
        Writes.Resizer.PreallocateAsync(mode, async, cancellationToken);

    private ValueTask CommitCoreAsync(bool keepOverlay, Qcow2OpenOptions? backingOptions, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        return new ChainOperations(this, _session).CommitAsync(keepOverlay, backingOptions, progress, async, cancellationToken);
    }

    private ValueTask RebaseCoreAsync(string? backingFile, string? backingFormat, bool unsafeRebase, IProgress<double>? progress, bool async, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        return new ChainOperations(this, _session).RebaseAsync(backingFile, backingFormat, unsafeRebase, progress, async, cancellationToken);
    }

    private ValueTask SetBackingFileCoreAsync(string? name, string? format, bool async, CancellationToken cancellationToken) =>
        new ChainOperations(this, _session).SetBackingFileAsync(name, format, async, cancellationToken);

    private async ValueTask<CheckResult> CheckCoreAsync(CheckRepair repair, bool async, CancellationToken cancellationToken)
    {
        if (repair != CheckRepair.None && !IsWritable)
        {
            throw new NotSupportedException("Repairing needs the image opened for writing.");
        }

        using (await _session.Metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            return await Checker.CheckLockedAsync(repair, salvage: true, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The checker: with the writable state when there is one (to repair), else read-only.</summary>
    private ImageChecker Checker => _writes?.Checker ?? new ImageChecker(_session, null);

    /// <summary>qemu-img check -r all without the repair beyond it, for an extension. Caller holds the metadata lock.</summary>
    internal CheckResult RepairLocked() =>
        SyncOver.Run(Writes.Checker.CheckLockedAsync(CheckRepair.All, salvage: false, async: false, CancellationToken.None));

    /// <summary>The amend steps, over this image's writable state.</summary>
    internal Amender CreateAmender()
    {
        var writes = Writes;
        return new Amender(_session, writes.State, writes.Writer, writes.Checker);
    }

    /// <summary>
    /// Runs <paramref name="action"/> under the metadata lock, for extension code that must change
    /// its own state consistently with the image's mappings (not for application code: calling
    /// image methods inside would deadlock).
    /// </summary>
    internal T RunLocked<T>(Func<T> action)
    {
        ThrowIfDisposed();
        using (SyncOver.Run(_session.Metadata.MetadataLock.AcquireAsync(async: false, CancellationToken.None)))
        {
            return action();
        }
    }
}
