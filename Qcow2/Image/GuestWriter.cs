using System.Buffers;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The guest write path (QEMU's qcow2-cluster.c): writes in place or copy-on-write into a host
/// cluster the allocator seam places, zero clusters, discards and compressed clusters. Data moves
/// outside the metadata lock; mappings change under it, through <see cref="ActiveTables"/> and
/// <see cref="RefcountAllocator"/>, which apply the ordering rules.
/// </summary>
internal sealed partial class GuestWriter
{
    private readonly ImageSession _session;
    private readonly ImageMetadata _metadata;
    private readonly WritableState _writable;
    private readonly GuestReader _reader;

    public GuestWriter(ImageSession session, WritableState writable, GuestReader reader)
    {
        _session = session;
        _metadata = session.Metadata;
        _writable = writable;
        _reader = reader;
    }

    /// <summary>Guest-visible size in bytes (the header's: a writer never serves a snapshot view).</summary>
    private long Size => _metadata.Header.Header.Size;

    /// <param name="offset">Guest offset.</param>
    /// <param name="data">The bytes.</param>
    /// <param name="async">Whether to run asynchronously.</param>
    /// <param name="cancellationToken">Cancels at I/O boundaries.</param>
    /// <param name="fingerprints">
    /// The allocator's fingerprints of the write's clusters, computed ahead by <see cref="Fingerprint"/>
    /// from these same bytes (a copy pipeline hashes the next chunk while this one is written); null: computed here.
    /// Given, they also vouch that the bytes stay unchanged until the write returns, as <paramref name="stable"/> does.
    /// </param>
    /// <param name="stable">
    /// The bytes are the caller's own copy and stay unchanged until the write returns, so whole clusters
    /// are hashed and stored from them directly. Otherwise a cluster hashed for sharing is first copied,
    /// so that the bytes hashed and the bytes stored are one copy (a caller's memory may change under us).
    /// </param>
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken, ClusterFingerprint?[]? fingerprints = null, bool stable = false)
    {
        if (data.IsEmpty)
        {
            return;
        }

        _session.Bitmaps?.MarkDirty(offset, data.Length);

        var geometry = _metadata.Geometry;
        var end = offset + data.Length;
        using var range = await LockClustersAsync(offset, end, async, cancellationToken).ConfigureAwait(false);
        stable |= fingerprints is not null;
        fingerprints ??= Fingerprint(offset, data);
        var done = 0;
        var clusterNumber = 0;
        var tryRuns = WritesRuns;
        while (done < data.Length)
        {
            var position = offset + done;
            var clusterStart = geometry.StartOfCluster(position);
            var from = (int)(position - clusterStart);
            if (from == 0 && tryRuns && data.Length - done >= 2 * geometry.ClusterSize)
            {
                var run = await WriteRunAsync(clusterStart, data[done..], async, cancellationToken).ConfigureAwait(false);
                if (run > 0)
                {
                    done += run;
                    clusterNumber += run >> geometry.ClusterBits;
                    continue;
                }
            }

            var length = (int)Math.Min(geometry.ClusterSize - from, data.Length - done);
            var inPlace = await WriteClusterAsync(clusterStart, from, data.Slice(done, length), fingerprints?[clusterNumber], stable, async, cancellationToken).ConfigureAwait(false);
            // A cluster the run path left to this one and that was rewritten in place (part of a
            // cluster, extended L2, a zero cluster's host) likely has neighbours like it: runs are
            // tried again only after a cluster that needed a fresh host cluster, instead of
            // inspecting every such cluster twice.
            tryRuns = WritesRuns && !inPlace;
            done += length;
            clusterNumber++;
        }
    }

    private ValueTask<RangeLock.Releaser> LockClustersAsync(long start, long end, bool async, CancellationToken cancellationToken) =>
        _session.GuestLock.AcquireAsync(_metadata.Geometry.StartOfCluster(start), _metadata.Geometry.RoundUpToCluster(end), exclusive: true, async, cancellationToken);

    /// <summary>
    /// Fingerprints (typically hashes) every whole cluster of a large write in parallel before the
    /// per-cluster work, when the allocator wants it. Index i belongs to the i-th cluster touched.
    /// </summary>
    public ClusterFingerprint?[]? Fingerprint(long offset, ReadOnlyMemory<byte> data)
    {
        var allocator = _writable.Allocator;
        var geometry = _metadata.Geometry;
        if (!allocator.SharesClusters || data.Length < 2 * geometry.ClusterSize)
        {
            return null;
        }

        var first = geometry.ClusterIndex(offset);
        var last = geometry.ClusterIndex(offset + data.Length - 1);
        var fingerprints = new ClusterFingerprint?[last - first + 1];
        Parallel.For(0, fingerprints.Length, i =>
        {
            var clusterStart = (first + i) << geometry.ClusterBits;
            if (clusterStart >= offset && clusterStart + geometry.ClusterSize <= offset + data.Length)
            {
                fingerprints[i] = allocator.Fingerprint(data.Span.Slice((int)(clusterStart - offset), geometry.ClusterSize));
            }
        });
        return fingerprints;
    }

    /// <summary>
    /// Writes <paramref name="data"/> at byte <paramref name="from"/> of the guest cluster at
    /// <paramref name="clusterStart"/>; returns whether it was written in place.
    /// </summary>
    private async ValueTask<bool> WriteClusterAsync(long clusterStart, int from, ReadOnlyMemory<byte> data, ClusterFingerprint? fingerprint, bool stable, bool async, CancellationToken cancellationToken)
    {
        if (from == 0 && data.Length == ClusterBytesAt(clusterStart) && !data.Span.ContainsAnyExcept((byte)0)
            && await ZeroDetectedClusterAsync(clusterStart, async, cancellationToken).ConfigureAwait(false))
        {
            return false;
        }

        ClusterState state;
        using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
        {
            state = await InspectClusterLockedAsync(clusterStart, wholeCluster: from == 0 && data.Length == ClusterBytesAt(clusterStart), async, cancellationToken).ConfigureAwait(false);
            if (state.InPlace)
            {
                // Decided under the metadata lock; until the bytes are written no one may share the
                // cluster (an allocator answer naming it is refused), so its refcount stays 1.
                _writable.InPlaceWrites.TryAdd(state.Host, 0);
            }
        }

        if (state.InPlace)
        {
            try
            {
                await WriteInPlaceAsync(state, from, data, async, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _writable.InPlaceWrites.TryRemove(state.Host, out _);
            }
        }
        else
        {
            await WriteToNewClusterAsync(state, from, data, fingerprint, stable, async, cancellationToken).ConfigureAwait(false);
        }

        return state.InPlace;
    }

    /// <summary>Guest bytes of the cluster at <paramref name="clusterStart"/> that lie inside the disk.</summary>
    private int ClusterBytesAt(long clusterStart) => (int)Math.Min(_metadata.Geometry.ClusterSize, Size - clusterStart);

    /// <summary>Reads a cluster's mapping and decides whether it can be written in place.</summary>
    private async ValueTask<ClusterState> InspectClusterLockedAsync(long clusterStart, bool wholeCluster, bool async, CancellationToken cancellationToken)
    {
        var (entry, bitmap) = await _writable.Tables.ReadEntryAsync(clusterStart, async, cancellationToken).ConfigureAwait(false);
        var geometry = _metadata.Geometry;
        var type = entry.GetClusterType(geometry.ExtendedL2, geometry.ExternalDataFile);
        var host = type is ClusterType.Normal or ClusterType.ZeroAllocated ? entry.HostOffset : -1;
        if (host >= 0 && !geometry.IsClusterAligned(host))
        {
            throw Qcow2Corruption.Create("L2 table", $"the entry for guest offset 0x{clusterStart:x} points at data cluster offset 0x{host:x}, which is not cluster aligned");
        }

        var inPlace = false;
        if (host >= 0)
        {
            if (geometry.ExternalDataFile)
            {
                inPlace = true;
            }
            else
            {
                var refcount = await _writable.Refcounts.GetAsync(host >> geometry.ClusterBits, async, cancellationToken).ConfigureAwait(false);
                if (refcount == 0)
                {
                    throw Qcow2Corruption.Create("refcount block", $"data cluster 0x{host:x} (guest offset 0x{clusterStart:x}) is in use but its refcount is 0");
                }

                // In place only when COPIED says this entry owns the cluster alone (QEMU's rule) and the
                // refcount agrees (ours): a refcount of 1 under an entry without COPIED can be a damaged
                // image whose "data cluster" is another entry's data or some table, so copy it instead.
                inPlace = entry.IsCopied && refcount == 1 && _writable.Allocator.AllowOverwriteInPlace(host, clusterStart, wholeCluster);
            }
        }

        return new ClusterState(clusterStart, entry, bitmap, type, host, inPlace);
    }

    private async ValueTask WriteInPlaceAsync(ClusterState state, int from, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken)
    {
        var geometry = _metadata.Geometry;
        var to = from + data.Length;
        var entry = state.Entry.WithCopied(true);
        var bitmap = state.Bitmap;
        if (!geometry.ExtendedL2 && state.Type == ClusterType.ZeroAllocated)
        {
            // The cluster reads as zeros: its new content is zeros plus the written bytes.
            await WriteComposedAsync(state.Host, 0, geometry.ClusterSize, from, data, zeroBase: true, state.ClusterStart, async, cancellationToken).ConfigureAwait(false);
            entry = L2Entry.Normal(state.Host, copied: true);
        }
        else if (geometry.ExtendedL2)
        {
            var (spanStart, spanEnd) = SubclusterSpan(from, to);
            var firstPartial = from != spanStart && state.SubclusterType(geometry.SubclusterIndex(state.ClusterStart + from)) != SubclusterType.Normal;
            var lastPartial = to != spanEnd && state.SubclusterType(geometry.SubclusterIndex(state.ClusterStart + to - 1)) != SubclusterType.Normal;
            if (firstPartial || lastPartial)
            {
                await WriteComposedAsync(state.Host + spanStart, spanStart, spanEnd - spanStart, from, data, zeroBase: false, state.ClusterStart, async, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await WriteDataAsync(state.Host + from, data, async, cancellationToken).ConfigureAwait(false);
            }

            bitmap = WithAllocatedSpan(bitmap, spanStart, spanEnd);
        }
        else
        {
            await WriteDataAsync(state.Host + from, data, async, cancellationToken).ConfigureAwait(false);
        }

        if (entry != state.Entry || bitmap != state.Bitmap)
        {
            using (await _metadata.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false))
            {
                using var table = await _writable.Tables.GetWritableAsync(state.ClusterStart, async, cancellationToken).ConfigureAwait(false);
                // Setting COPIED must not reach the disk before the decrement that made the refcount 1.
                await _writable.Tables.SetEntryAfterDataAsync(table, state.ClusterStart, entry, bitmap, async, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Writes bytes [spanStart, spanStart + spanLength) of a cluster to <paramref name="host"/>: the
    /// cluster's current content (or zeros) with <paramref name="data"/> laid over it at <paramref name="from"/>.
    /// </summary>
    private async ValueTask WriteComposedAsync(long host, int spanStart, int spanLength, int from, ReadOnlyMemory<byte> data, bool zeroBase, long clusterStart, bool async, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(spanLength);
        try
        {
            var span = buffer.AsMemory(0, spanLength);
            if (zeroBase)
            {
                span.Span.Clear();
            }
            else
            {
                await ReadWithinDiskAsync(clusterStart + spanStart, span, async, cancellationToken).ConfigureAwait(false);
            }

            data.Span.CopyTo(span.Span[(from - spanStart)..]);
            await WriteDataAsync(host, span, async, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads guest bytes while the caller already holds the clusters' range lock; bytes past the disk read as zeros.</summary>
    private async ValueTask ReadWithinDiskAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        var inside = (int)Math.Clamp(Size - offset, 0, buffer.Length);
        buffer.Span[inside..].Clear();
        if (inside > 0)
        {
            await _reader.ReadAsync(offset, buffer[..inside], async, cancellationToken, lockRange: false).ConfigureAwait(false);
        }
    }

    /// <summary>Writes guest data to the data file (the image itself or the external data file).</summary>
    public async ValueTask WriteDataAsync(long host, ReadOnlyMemory<byte> data, bool async, CancellationToken cancellationToken)
    {
        if (!_metadata.Geometry.ExternalDataFile)
        {
            _metadata.GuardData(host, data.Length);
        }

        await _session.GuestDataFile.WriteAsync(host, data, async, cancellationToken).ConfigureAwait(false);
        if (!_metadata.Geometry.ExternalDataFile)
        {
            _metadata.NoteFileEnd(host + data.Length);
        }
    }

    /// <summary>The subcluster-aligned span covering bytes [from, to) of a cluster.</summary>
    private (int Start, int End) SubclusterSpan(int from, int to)
    {
        var size = _metadata.Geometry.SubclusterSize;
        return (from / size * size, (to + size - 1) / size * size);
    }

    /// <summary>The bitmap with the span's subclusters allocated and no longer zero.</summary>
    private SubclusterBitmap WithAllocatedSpan(SubclusterBitmap bitmap, int spanStart, int spanEnd)
    {
        var bits = _metadata.Geometry.SubclusterBits;
        var first = spanStart >> bits;
        var count = (spanEnd - spanStart) >> bits;
        return new SubclusterBitmap((bitmap.Raw & ~SubclusterBitmap.ZeroRange(first, count)) | SubclusterBitmap.AllocatedRange(first, count));
    }

    /// <summary>A guest cluster's mapping as the write path found it.</summary>
    private readonly record struct ClusterState(long ClusterStart, L2Entry Entry, SubclusterBitmap Bitmap, ClusterType Type, long Host, bool InPlace)
    {
        public SubclusterType SubclusterType(int index) => Bitmap.GetSubclusterType(Type, index);
    }
}
