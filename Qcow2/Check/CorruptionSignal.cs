using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// QEMU's qcow2_signal_corruption as a check meets it: the first fatal inconsistency of a writable
/// image marks the image corrupt (incompatible bit 1) and says so; on a read-only image it is only
/// reported, once. Later events are not repeated.
/// </summary>
internal sealed class CorruptionSignal(ImageMetadata metadata, CheckReport report)
{
    private bool _signalled;

    public async ValueTask RaiseAsync(string message, bool async, CancellationToken cancellationToken)
    {
        if (_signalled)
        {
            return;
        }

        _signalled = true;
        if (!metadata.Writable)
        {
            report.Note($"Image is corrupt: {message}; further non-fatal corruption events will be suppressed");
            return;
        }

        report.Note($"Marking image as corrupt: {message}; further corruption events will be suppressed");
        var header = metadata.Header.Header;
        if (header.Version >= 3 && (header.Incompatible & IncompatibleFeatures.Corrupt) == 0)
        {
            await metadata.WriteHeaderFieldsAsync(header with { Incompatible = header.Incompatible | IncompatibleFeatures.Corrupt }, Qcow2Header.IncompatibleFeaturesOffset, 8, async, cancellationToken).ConfigureAwait(false);
        }
    }
}
