using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>One layer of a backing chain as seen by the layer above it: a qcow2 image or a raw file.</summary>
internal interface IGuestDisk : IDisposable
{
    /// <summary>Guest-visible size; reads past it return zeros.</summary>
    long Size { get; }

    /// <summary>"qcow2" or "raw".</summary>
    string Format { get; }

    /// <summary>Full path of the file, when known.</summary>
    string? FilePath { get; }

    /// <summary>The file this layer reads from (its image file, or the raw file).</summary>
    IStorage File { get; }

    /// <summary>The next layer down, if any.</summary>
    IGuestDisk? BackingDisk { get; }

    /// <summary>Fills <paramref name="buffer"/> with guest bytes from <paramref name="offset"/>; zeros past <see cref="Size"/>.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken);

    /// <summary>Appends block-status entries for [offset, offset + length) at chain depth <paramref name="depth"/>.</summary>
    ValueTask MapAsync(long offset, long length, int depth, List<MapEntry> output, bool async, CancellationToken cancellationToken);
}
