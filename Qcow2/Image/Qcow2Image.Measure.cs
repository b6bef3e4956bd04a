
namespace QcowDedup.Qcow2.Image;

/// <summary>
/// File sizes a qcow2 image would need, with the meaning of qemu-img measure's figures.
/// </summary>
/// <param name="Required">
/// Bytes the image file needs for the data that would be written (or for the given size when
/// nothing is copied) plus all metadata of a fully allocated image of that size.
/// </param>
/// <param name="FullyAllocated">Bytes the image file needs when every guest cluster is allocated.</param>
/// <param name="Bitmaps">
/// Extra bytes that copying the source's persistent bitmaps would need; null where qemu-img prints
/// no figure (no source, a source that cannot hold bitmaps, or a compat=0.10 target).
/// </param>
public sealed record Qcow2Measurement(long Required, long FullyAllocated, long? Bitmaps);

public sealed partial class Qcow2Image
{
    /// <summary>Guest bytes asked for block status at once, so a huge fragmented source never builds one giant map.</summary>
    private const long MeasureWindow = 1L << 30;

    /// <summary>
    /// Sizes of a new qcow2 image of <see cref="Qcow2CreateOptions.Size"/> bytes created with
    /// <paramref name="options"/> (qemu-img measure --size). Options qemu-img measure does not use
    /// (backing file, data file, lazy refcounts, compression type) do not change the figures.
    /// </summary>
    /// <exception cref="ArgumentException">The options break qcow2's or QEMU's limits, or no size is given.</exception>
    public static Qcow2Measurement Measure(Qcow2CreateOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var target = MeasureTarget.From(options);
        var size = options.Size ?? throw new ArgumentException("Measuring without a source needs a size.", nameof(options));
        var virtualSize = target.RoundUp(size);
        return target.Result(virtualSize, dataBytes: 0, hasSource: false, bitmaps: null);
    }

    /// <summary>
    /// Sizes of a qcow2 image holding a copy of <paramref name="source"/> (its guest view through
    /// the whole backing chain), as qemu-img measure computes them: "required" counts every target
    /// cluster holding a byte that block status reports as data and not as zeros (contents are not
    /// inspected), and all of the source's persistent bitmaps are counted when source and target
    /// are both version 3. <see cref="Qcow2CreateOptions.Size"/>, when set, is only checked
    /// against qcow2's limits, like qemu-img does with -o size.
    /// </summary>
    /// <exception cref="ArgumentException">The options break qcow2's or QEMU's limits.</exception>
    /// <exception cref="NotSupportedException">The source is encrypted.</exception>
    public static Qcow2Measurement Measure(Qcow2CreateOptions options, Qcow2Image source)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(source);
        var target = MeasureTarget.From(options);
        var size = source.Size;
        var dataBytes = target.DataClusterBytes(size, Windows(size, source.GetMap));
        long? bitmaps = target.Version >= 3 && source.Info.Version >= 3 ? target.BitmapBytes(source.Bitmaps, size) : null;
        return target.Result(target.RoundUp(size), dataBytes, hasSource: true, bitmaps);
    }

    /// <summary>
    /// Sizes of a qcow2 image holding a copy of a disk described by its block-status map (for
    /// example a raw file: data extents and holes), by the rules of
    /// <see cref="Measure(Qcow2CreateOptions, Qcow2Image)"/>. Such a source has no bitmaps.
    /// </summary>
    /// <param name="options">The target image's options.</param>
    /// <param name="sourceSize">Guest size of the source in bytes.</param>
    /// <param name="sourceMap">Block status of the source in ascending order; bytes it does not cover read as zeros.</param>
    /// <exception cref="ArgumentException">The options break qcow2's or QEMU's limits.</exception>
    public static Qcow2Measurement Measure(Qcow2CreateOptions options, long sourceSize, IEnumerable<MapEntry> sourceMap)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(sourceMap);
        ArgumentOutOfRangeException.ThrowIfNegative(sourceSize);
        var target = MeasureTarget.From(options);
        var dataBytes = target.DataClusterBytes(sourceSize, sourceMap);
        return target.Result(target.RoundUp(sourceSize), dataBytes, hasSource: true, bitmaps: null);
    }

    private static IEnumerable<MapEntry> Windows(long size, Func<long, long, IReadOnlyList<MapEntry>> map)
    {
        for (long start = 0; start < size; start += MeasureWindow)
        {
            foreach (var entry in map(start, Math.Min(MeasureWindow, size - start)))
            {
                yield return entry;
            }
        }
    }
}
