using System.Buffers;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

// Guest I/O: thin public wrappers over the read path (GuestReader) and the write path (GuestWriter).
public sealed partial class Qcow2Image
{
    /// <summary>Reads guest bytes [offset, offset + buffer.Length), which must lie inside the disk.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range extends past <see cref="Size"/>.</exception>
    /// <exception cref="InvalidDataException">Metadata on the way is corrupt.</exception>
    public void Read(long offset, Span<byte> buffer)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, buffer.Length);
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            var memory = rented.AsMemory(0, buffer.Length);
            SyncOver.Run(ReadCoreAsync(offset, memory, async: false, CancellationToken.None));
            memory.Span.CopyTo(buffer);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Reads guest bytes [offset, offset + buffer.Length), which must lie inside the disk.</summary>
    public void Read(long offset, byte[] buffer, int index, int count)
    {
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(buffer);
        ThrowIfOutOfRange(offset, count);
        SyncOver.Run(ReadCoreAsync(offset, buffer.AsMemory(index, count), async: false, CancellationToken.None));
    }

    /// <summary>Reads guest bytes [offset, offset + buffer.Length), which must lie inside the disk.</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, buffer.Length);
        return ReadCoreAsync(offset, buffer, async: true, cancellationToken);
    }

    ValueTask IGuestDisk.ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        var inside = (int)Math.Clamp(Size - offset, 0, buffer.Length);
        buffer.Span[inside..].Clear();
        return inside == 0 ? ValueTask.CompletedTask : ReadCoreAsync(offset, buffer[..inside], async, cancellationToken);
    }

    /// <summary>Writes guest bytes at <paramref name="offset"/>; the range must lie inside the disk.</summary>
    /// <exception cref="NotSupportedException">The image is read-only.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The range extends past <see cref="Size"/>.</exception>
    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            buffer.CopyTo(rented);
            ThrowIfNotWritable(offset, buffer.Length);
            SyncOver.Run(Guard(Writes.Writer.WriteAsync(offset, rented.AsMemory(0, buffer.Length), async: false, CancellationToken.None, stable: true))); // our copy: hashed and stored as is
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <inheritdoc cref="Write(long, ReadOnlySpan{byte})"/>
    public void Write(long offset, byte[] buffer, int index, int count)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        ThrowIfNotWritable(offset, count);
        SyncOver.Run(Guard(WriteCoreAsync(offset, buffer.AsMemory(index, count), async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Write(long, ReadOnlySpan{byte})"/>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfNotWritable(offset, buffer.Length);
        return Guard(WriteCoreAsync(offset, buffer, async: true, cancellationToken));
    }

    /// <summary>
    /// Makes [offset, offset + length) read as zeros without writing zero data where the format can
    /// say so: whole clusters get the zero flag (v3, keeping an allocated host cluster unless
    /// <paramref name="unmap"/>), or are unallocated (v2, where no backing file shows through);
    /// partial clusters are written with zeros.
    /// </summary>
    public void WriteZeroes(long offset, long length, bool unmap = false)
    {
        ThrowIfNotWritable(offset, length);
        SyncOver.Run(Guard(WriteZeroesCoreAsync(offset, length, unmap, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="WriteZeroes"/>
    public ValueTask WriteZeroesAsync(long offset, long length, bool unmap = false, CancellationToken cancellationToken = default)
    {
        ThrowIfNotWritable(offset, length);
        return Guard(WriteZeroesCoreAsync(offset, length, unmap, async: true, cancellationToken));
    }

    /// <summary>
    /// Discards whole clusters in [offset, offset + length), as a guest TRIM: their host clusters
    /// are freed and they read as zeros on v3 images (v2 images may show the backing file again,
    /// as in QEMU). Partial clusters at either end are left alone.
    /// </summary>
    public void Discard(long offset, long length)
    {
        ThrowIfNotWritable(offset, length);
        SyncOver.Run(Guard(DiscardCoreAsync(offset, length, async: false, CancellationToken.None)));
    }

    /// <inheritdoc cref="Discard"/>
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ThrowIfNotWritable(offset, length);
        return Guard(DiscardCoreAsync(offset, length, async: true, cancellationToken));
    }

    /// <summary>
    /// Writes one whole cluster compressed (as qemu-img convert -c does). Clusters that do not
    /// shrink, and images with an external data file, store it uncompressed.
    /// </summary>
    /// <param name="offset">Cluster-aligned guest offset.</param>
    /// <param name="cluster">The cluster's bytes (shorter only for the last cluster of the disk).</param>
    public void WriteCompressed(long offset, ReadOnlySpan<byte> cluster)
    {
        var rented = ArrayPool<byte>.Shared.Rent(cluster.Length);
        try
        {
            cluster.CopyTo(rented);
            ThrowIfNotWritable(offset, cluster.Length);
            SyncOver.Run(Guard(WriteCompressedCoreAsync(offset, rented.AsMemory(0, cluster.Length), async: false, CancellationToken.None)));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <inheritdoc cref="WriteCompressed"/>
    public ValueTask WriteCompressedAsync(long offset, ReadOnlyMemory<byte> cluster, CancellationToken cancellationToken = default)
    {
        ThrowIfNotWritable(offset, cluster.Length);
        return Guard(WriteCompressedCoreAsync(offset, cluster, async: true, cancellationToken));
    }

    /// <summary>
    /// How each guest byte of [offset, offset + length) is backed in this image, without looking into
    /// backing files: allocated data (with host offsets), zeros, backing, or nothing. Adjacent runs of
    /// one kind with contiguous host offsets are merged. The list DiscUtils' sparse streams need.
    /// </summary>
    public IReadOnlyList<GuestExtent> GetExtents(long offset, long length)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, length);
        return SyncOver.Run(GetExtentsCoreAsync(offset, length, async: false, CancellationToken.None));
    }

    /// <inheritdoc cref="GetExtents"/>
    public ValueTask<IReadOnlyList<GuestExtent>> GetExtentsAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, length);
        return GetExtentsCoreAsync(offset, length, async: true, cancellationToken);
    }

    /// <summary>
    /// Block status through the whole backing chain for [offset, offset + length), with the meaning
    /// and merging of qemu-img map --output=json.
    /// </summary>
    public IReadOnlyList<MapEntry> GetMap(long offset, long length)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, length);
        var entries = new List<MapEntry>();
        SyncOver.Run(((IGuestDisk)this).MapAsync(offset, length, 0, entries, async: false, CancellationToken.None));
        return Merge(entries);
    }

    /// <inheritdoc cref="GetMap"/>
    public async ValueTask<IReadOnlyList<MapEntry>> GetMapAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        ThrowIfOutOfRange(offset, length);
        var entries = new List<MapEntry>();
        await ((IGuestDisk)this).MapAsync(offset, length, 0, entries, async: true, cancellationToken).ConfigureAwait(false);
        return Merge(entries);
    }

    ValueTask IGuestDisk.MapAsync(long offset, long length, int depth, List<MapEntry> output, bool async, CancellationToken cancellationToken) =>
        _reader.MapAsync(offset, length, depth, output, async, cancellationToken);

    /// <summary>The read path, for the chain operations and the stream (range checks done by the caller).</summary>
    internal ValueTask ReadCoreAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken) =>
        _reader.ReadAsync(offset, buffer, async, cancellationToken);

    /// <summary>The write path, for the chain operations (range checks done by the caller).</summary>
    internal ValueTask WriteCoreAsync(long offset, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken) =>
        Writes.Writer.WriteAsync(offset, data, async, cancellationToken);

    /// <summary>
    /// The allocator's fingerprints of the whole clusters of a write (null when it shares no
    /// clusters or the write is short), to hand to the write of those bytes; safe on any thread.
    /// </summary>
    internal ClusterFingerprint?[]? FingerprintForWrite(long offset, ReadOnlyMemory<byte> data) => Writes.Writer.Fingerprint(offset, data);

    /// <summary>The write path with fingerprints computed ahead from the same bytes (range checks done by the caller).</summary>
    internal ValueTask WriteCoreAsync(long offset, ReadOnlyMemory<byte> data, ClusterFingerprint?[]? fingerprints, bool async, CancellationToken cancellationToken) =>
        Guard(Writes.Writer.WriteAsync(offset, data, async, cancellationToken, fingerprints));

    /// <summary>Zeroes a range, for the chain operations (range checks done by the caller).</summary>
    internal ValueTask WriteZeroesCoreAsync(long offset, long length, bool unmap, bool async, CancellationToken cancellationToken) =>
        Writes.Writer.WriteZeroesAsync(offset, length, unmap, async, cancellationToken);

    private ValueTask DiscardCoreAsync(long offset, long length, bool async, CancellationToken cancellationToken) =>
        Writes.Writer.DiscardAsync(offset, length, async, cancellationToken);

    private ValueTask WriteCompressedCoreAsync(long offset, ReadOnlyMemory<byte> cluster, bool async, CancellationToken cancellationToken) =>
        Writes.Writer.WriteCompressedAsync(offset, cluster, async, cancellationToken);

    private ValueTask<IReadOnlyList<GuestExtent>> GetExtentsCoreAsync(long offset, long length, bool async, CancellationToken cancellationToken) =>
        _reader.GetExtentsAsync(offset, length, async, cancellationToken);

    private static List<MapEntry> Merge(List<MapEntry> entries) => GuestReader.Merge(entries);
}
