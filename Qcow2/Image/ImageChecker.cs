using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// Runs the checker (<see cref="RefcountChecker"/>) over an image, and the repair beyond
/// qemu-img's when asked: flushes first, and clears the dirty and corrupt bits when a repair comes
/// out clean. <paramref name="writable"/> is null for a read-only image, which is only checked.
/// </summary>
internal sealed class ImageChecker(ImageSession session, WritableState? writable)
{
    private readonly ImageMetadata _metadata = session.Metadata;

    /// <param name="repair">What to repair (only with writable state).</param>
    /// <param name="salvage">With <see cref="CheckRepair.All"/>, repair what qemu-img's -r all leaves broken (an explicit check, never an open's implicit repair).</param>
    /// <param name="async">Whether to run asynchronously.</param>
    /// <param name="cancellationToken">Cancels at I/O boundaries.</param>
    public async ValueTask<CheckResult> CheckLockedAsync(CheckRepair repair, bool salvage, bool async, CancellationToken cancellationToken)
    {
        if (writable is not null)
        {
            await writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        }

        var result = await new RefcountChecker(_metadata, writable?.Refcounts).RunAsync(repair, async, cancellationToken).ConfigureAwait(false);
        if (writable is null || repair == CheckRepair.None)
        {
            return result;
        }

        if (salvage && repair == CheckRepair.All && !IsClean(result))
        {
            result = await SalvageLockedAsync(writable, result, async, cancellationToken).ConfigureAwait(false);
        }

        await writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        if (IsClean(result))
        {
            await writable.Metadata.MarkRepairedAsync(async, cancellationToken).ConfigureAwait(false);
        }

        return result;
    }

    /// <summary>Counts every reference to every host cluster, as the check does (for a refcount structure of another width).</summary>
    public async ValueTask<ulong[]> CountReferencesLockedAsync(bool async, CancellationToken cancellationToken)
    {
        var report = new CheckReport();
        var counter = new ReferenceCounter(_metadata, report, new CorruptionSignal(_metadata, report));
        await counter.CalculateAsync(await _metadata.GetRefcountsLockedAsync(async, cancellationToken).ConfigureAwait(false), fixErrors: false, async, cancellationToken).ConfigureAwait(false);
        return [.. counter.References.ToArray().Select(r => (ulong)r)];
    }

    private static bool IsClean(CheckResult result) => result.Failure is null && result.CheckErrors == 0 && result.Corruptions == 0;

    /// <summary>
    /// After a QEMU-style -r all that left errors: mend or drop the mappings QEMU cannot repair,
    /// rebuild and repair the refcounts around them, then check again. The result carries the final
    /// counts; everything found and repaired on the way counts as fixed, every change is a message.
    /// </summary>
    private async ValueTask<CheckResult> SalvageLockedAsync(WritableState state, CheckResult first, bool async, CancellationToken cancellationToken)
    {
        await state.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _metadata.RefcountCache.Clear();
        var report = new CheckReport();
        report.Note("Repairing what qemu-img check -r all leaves behind:");
        await new SalvageRepair(_metadata, report).RunAsync(async, cancellationToken).ConfigureAwait(false);
        var repaired = await new RefcountChecker(_metadata, writable?.Refcounts, beyondQemu: true).RunAsync(CheckRepair.All, async, cancellationToken).ConfigureAwait(false);
        await state.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        var final = await new RefcountChecker(_metadata, writable?.Refcounts).RunAsync(CheckRepair.None, async, cancellationToken).ConfigureAwait(false);
        return final with
        {
            CorruptionsFixed = first.CorruptionsFixed + Math.Max(0, first.Corruptions - final.Corruptions),
            LeaksFixed = first.LeaksFixed + Math.Max(0, first.Leaks - final.Leaks),
            Messages = [.. first.Messages, .. report.Messages, .. repaired.Messages, .. final.Messages],
            Losses = report.Losses,
        };
    }
}
