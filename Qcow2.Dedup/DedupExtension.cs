using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup;

/// <summary>
/// Inline deduplication as an image extension: its index lives in clusters the image reserves
/// without refcounting them, described by header extension 0x7C2E5DD1 and guarded by auto-clear
/// bit 60, so qemu-img check stays clean and QEMU can still read and write the image (its first
/// write clears the bit, after which the index is rebuilt rather than trusted).
/// Use one instance per open image; <see cref="DedupImageExtensions.WithDedup(Qcow2OpenOptions, DedupOptions?)"/> creates it.
/// </summary>
public sealed class DedupExtension : IImageExtension
{
    private readonly DedupAllocator _allocator;
    private int _opened;

    /// <summary>Creates the extension with the given options (validated: out-of-range values throw <see cref="ArgumentOutOfRangeException"/>).</summary>
    public DedupExtension(DedupOptions? options = null)
    {
        Options = options ?? new DedupOptions();
        Options.Validate();
        _allocator = new DedupAllocator(this);
    }

    /// <summary>The options in effect.</summary>
    public DedupOptions Options { get; }

    /// <inheritdoc />
    public uint HeaderExtensionType => DedupHeader.ExtensionType;

    /// <inheritdoc />
    public int AutoclearBit => DedupHeader.AutoclearBit;

    /// <inheritdoc />
    public string FeatureName => DedupHeader.FeatureName;

    /// <summary>
    /// The dedup allocator while the index is active, else null: an image without an index
    /// (or with a stale one, on a read-only open) keeps the core's fresh-cluster allocator, so its
    /// writes are not hashed for nothing.
    /// </summary>
    public IClusterAllocator? Allocator => State == DedupIndexState.Active ? _allocator : null;

    /// <summary>The state the image's index was found in.</summary>
    public DedupIndexState State => Index?.State ?? DedupIndexState.Absent;

    internal DedupIndex? Index { get; private set; }

    /// <inheritdoc />
    public void Open(IImageExtensionHost host, ReadOnlyMemory<byte>? payload, bool autoclearBitSet)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (Interlocked.Exchange(ref _opened, 1) != 0)
        {
            throw new InvalidOperationException("A DedupExtension serves one image; create a new one (WithDedup) for every open.");
        }

        Index = DedupIndex.Open(host, Options, payload, autoclearBitSet);
    }

    /// <inheritdoc />
    public void Flush(IImageExtensionHost host) => Index?.Flush();

    /// <inheritdoc />
    public void Close(IImageExtensionHost host) => Index?.Close();
}
