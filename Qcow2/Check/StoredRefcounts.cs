using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// The refcounts stored on disk as QEMU's qcow2_get_refcount reads them during a check: reserved
/// bits of a refcount table entry are ignored, a refcount block past the end of the file reads as
/// zeros, and only a block offset that is not cluster aligned fails — signalling corruption, which
/// marks a writable image corrupt. The strict reader of the write path would refuse all three.
/// </summary>
internal sealed class StoredRefcounts(ImageMetadata metadata, CorruptionSignal signal)
{
    private readonly Geometry _geometry = metadata.Geometry;
    private long _knownLength;

    /// <summary>The current refcount table (a rebuild replaces its contents in place).</summary>
    public RefcountTable Table => metadata.Refcounts ?? throw new InvalidOperationException("The refcount table is read before the check starts.");

    /// <summary>The stored refcount of <paramref name="cluster"/>, or null when its block offset is misaligned.</summary>
    public async ValueTask<ulong?> GetAsync(long cluster, bool async, CancellationToken cancellationToken)
    {
        var tableIndex = cluster >> _geometry.RefcountBlockBits;
        var blockOffset = Table[tableIndex].BlockOffset;
        if (blockOffset == 0)
        {
            return 0;
        }

        if (!_geometry.IsClusterAligned(blockOffset))
        {
            await signal.RaiseAsync(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"Refblock offset 0x{blockOffset:x} unaligned (reftable index: {(tableIndex == 0 ? "0" : $"0x{tableIndex:x}")})"), async, cancellationToken).ConfigureAwait(false);
            return null;
        }

        // The file only grows during a check (repairs extend it), so a block inside the length
        // seen last is inside the file; only one past it needs a fresh look (an fstat per cluster
        // was most of a check's time).
        if (blockOffset >= _knownLength && blockOffset >= (_knownLength = metadata.File.Length))
        {
            return 0;
        }

        using var block = await metadata.RefcountCache.GetAsync(blockOffset, async, cancellationToken).ConfigureAwait(false);
        return RefcountBlock.Get(block.Span, (int)(cluster & (_geometry.RefcountBlockEntries - 1)), _geometry.RefcountOrder);
    }
}
