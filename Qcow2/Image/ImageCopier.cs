using System.Buffers;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>How <see cref="ImageCopier"/> copies.</summary>
public sealed record ImageCopyOptions
{
    /// <summary>Store each whole cluster compressed, unless it does not shrink (then plainly, like qemu-img -c).</summary>
    public bool Compress { get; init; }

    /// <summary>Receives the fraction done, from 0 to 1.</summary>
    public IProgress<double>? Progress { get; init; }

    /// <summary>
    /// The target already holds data of its own (qemu-img convert -n): what it reads is compared
    /// and overwritten where it differs, zeros included. False: it reads zeros (or its backing file).
    /// </summary>
    public bool TargetHasData { get; init; }

    /// <summary>
    /// Zero detection (qemu-img convert -S): null, zero granules of the source's data are left
    /// unwritten; 0, every byte the source stores is written (fully allocated); more, a granule is
    /// left unwritten only where the whole aligned block of this many bytes around it is zero.
    /// </summary>
    public long? SparseSize { get; init; }

    /// <summary>Most bytes per second to copy (qemu-img convert -r); null: as fast as possible.</summary>
    public long? RateLimit { get; init; }

    /// <summary>
    /// Salvage (qemu-img convert --salvage): told about each 512-byte sector of the source that
    /// cannot be read, which is copied as zeros; null, a read error ends the copy.
    /// </summary>
    public Action<long, Exception>? OnReadError { get; init; }

    /// <summary>
    /// Salvage, like <see cref="OnReadError"/>: told about each 512-byte sector of the source whose
    /// allocation status (its map) cannot be read, which is then read as data — once when the map
    /// is read, and again just before that sector is read, as qemu-img convert --salvage asks
    /// twice. Null: a map that cannot be read ends the copy.
    /// </summary>
    public Action<long, Exception>? OnStatusError { get; init; }

    /// <summary>Where in the target the source's first byte goes (several sources copied one after another).</summary>
    public long TargetOffset { get; init; }
}

/// <summary>
/// Copies a disk into a qcow2 image or a raw file, as <c>qemu-img convert</c> does: only what the
/// source's map reports as data is read, zero clusters stay unallocated, a target with a backing
/// file gets only what differs from it, and every cluster written goes through the target's
/// allocator (so a dedup image shares repeated content).
/// </summary>
/// <example>
/// <code>
/// using var source = DiskSource.Open("disk.qcow2");
/// using var target = Qcow2Image.Create("copy.qcow2", new Qcow2CreateOptions { Size = source.Size });
/// ImageCopier.Copy(source, target, new ImageCopyOptions { Progress = new Progress&lt;double&gt;(p => Console.Write($"\r{p:P0}")) });
/// </code>
/// </example>
public static partial class ImageCopier
{
    private const int ChunkSize = 2 << 20;

    /// <summary>
    /// Compressed copies work through larger chunks: each chunk's clusters are compressed on every
    /// core and the cores wait for the slowest at its end, so more clusters per chunk waste less.
    /// </summary>
    private const int CompressedChunkSize = 8 << 20;

    /// <summary>
    /// Writes into <paramref name="target"/> every cluster where it does not already read the
    /// source's bytes. Without a backing file the target reads zeros, so the source's non-zero
    /// clusters are written and its zero clusters stay unallocated. With one, clusters where the
    /// backing file already holds the source's bytes stay unallocated, and where the source is
    /// zero over backing data, zeros are written (zero clusters on v3). The target is flushed.
    /// </summary>
    /// <exception cref="ArgumentException">The target is smaller than the source.</exception>
    public static void Copy(DiskSource source, Qcow2Image target, ImageCopyOptions? options = null) =>
        SyncOver.Run(CopyCoreAsync(source, Target(source, target, options ?? new ImageCopyOptions()), options ?? new ImageCopyOptions(), async: false, CancellationToken.None));

    /// <inheritdoc cref="Copy(DiskSource, Qcow2Image, ImageCopyOptions?)"/>
    public static ValueTask CopyAsync(DiskSource source, Qcow2Image target, ImageCopyOptions? options = null, CancellationToken cancellationToken = default) =>
        CopyCoreAsync(source, Target(source, target, options ?? new ImageCopyOptions()), options ?? new ImageCopyOptions(), async: true, cancellationToken);

    /// <summary>
    /// Copies every non-zero byte of the source into <paramref name="target"/>, which is set to
    /// the source's size first (a sparse file keeps the zeros as holes), then flushed.
    /// </summary>
    public static void CopyToRaw(DiskSource source, IStorage target, ImageCopyOptions? options = null) =>
        SyncOver.Run(CopyCoreAsync(source, new RawTarget(target, options ?? new ImageCopyOptions()), options ?? new ImageCopyOptions(), async: false, CancellationToken.None));

    /// <inheritdoc cref="CopyToRaw"/>
    public static ValueTask CopyToRawAsync(DiskSource source, IStorage target, ImageCopyOptions? options = null, CancellationToken cancellationToken = default) =>
        CopyCoreAsync(source, new RawTarget(target, options ?? new ImageCopyOptions()), options ?? new ImageCopyOptions(), async: true, cancellationToken);

    /// <summary>
    /// Converts the disk at <paramref name="sourcePath"/> (qcow2 or raw, by its magic number) into
    /// a new qcow2 image at <paramref name="targetPath"/> created with <paramref name="createOptions"/>
    /// (its size is the source's). Refuses to write over the source or any file it reads.
    /// </summary>
    /// <exception cref="IOException">The target is the source or one of the files it reads.</exception>
    public static void Convert(string sourcePath, string targetPath, Qcow2CreateOptions? createOptions = null, ImageCopyOptions? options = null)
    {
        using var source = DiskSource.Open(sourcePath);
        ThrowIfSourceFile(source, targetPath);
        using var target = Qcow2Image.Create(targetPath, (createOptions ?? new Qcow2CreateOptions()) with { Size = source.Size });
        Copy(source, target, options);
    }

    /// <summary>Refuses a target that would truncate the source or a file it reads (its backing or data file).</summary>
    /// <exception cref="IOException">It would.</exception>
    public static void ThrowIfSourceFile(DiskSource source, string targetPath)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.UsesFile(targetPath))
        {
            // Refused by identity, not only by the source's lock: with locking off or force-share
            // nothing else would stop the output from truncating the source it is read from.
            throw new IOException($"Could not create '{targetPath}': it is the source image or a file the source reads (its backing or data file)");
        }
    }

    private static QcowTarget Target(DiskSource source, Qcow2Image target, ImageCopyOptions options)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(target);
        if (target.Size - options.TargetOffset < source.Size)
        {
            throw new ArgumentException($"The target image ({target.Size} bytes) is smaller than the source ({source.Size} bytes).", nameof(target));
        }

        return new QcowTarget(target, options);
    }

    private static async ValueTask CopyCoreAsync(DiskSource source, CopyTarget target, ImageCopyOptions options, bool async, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(source);
        var shift = options.TargetOffset;
        await target.PrepareAsync(shift + source.Size, async, cancellationToken).ConfigureAwait(false);
        var granularity = target.Granularity;
        var unknownStatus = new List<(long Start, long End)>();
        var map = await ReadMapAsync(source, options, unknownStatus, async, cancellationToken).ConfigureAwait(false);
        var shown = ToSource(await target.ShownRangesAsync(async, cancellationToken).ConfigureAwait(false), shift, source.Size);
        List<(long Start, long End)>? stored = options.SparseSize is 0 && source.Size > 0 ? [(0L, source.Size)] : null; // -S 0: every byte is written, as qemu-img fully allocates
        var throttle = options.RateLimit is { } rate ? new Throttle(rate) : null;
        var chunkSize = options.Compress ? CompressedChunkSize : ChunkSize;
        var chunks = Chunks(stored ?? ByteRanges.Union(ByteRanges.Granules(map, source.Size, granularity), shown), chunkSize).ToList();
        var current = ArrayPool<byte>.Shared.Rent(chunkSize);
        var next = ArrayPool<byte>.Shared.Rent(chunkSize);
        var before = ArrayPool<byte>.Shared.Rent(chunkSize);
        Task<ClusterFingerprint?[]?>? reading = null;
        try
        {
            // The next chunk is read while the current one is written (the source and the target
            // are different files): reading and writing overlap, as qemu-img's parallel requests do.
            var hash = !options.Compress;
            reading = chunks.Count > 0 ? ReadChunkAsync(source, target, chunks[0], shift, current, hash, options, unknownStatus, async, cancellationToken) : null;
            for (var i = 0; i < chunks.Count; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var fingerprints = await reading!.ConfigureAwait(false);
                (current, next) = (next, current);
                reading = i + 1 < chunks.Count ? ReadChunkAsync(source, target, chunks[i + 1], shift, current, hash, options, unknownStatus, async, cancellationToken) : null;
                var (position, length) = chunks[i];
                ReadOnlyMemory<byte>? targetReads = null;
                if (ByteRanges.Overlaps(shown, position, position + length))
                {
                    await target.ReadAsync(shift + position, before.AsMemory(0, length), async, cancellationToken).ConfigureAwait(false);
                    targetReads = before.AsMemory(0, length);
                }

                var data = next.AsMemory(0, length);
                var zeroBlock = stored is not null ? long.MaxValue : Math.Max(options.SparseSize ?? 0, granularity);
                await WriteDifferencesAsync(target, shift + position, data, targetReads, fingerprints, options.Compress, Keep, async, cancellationToken).ConfigureAwait(false);
                options.Progress?.Report((double)(position + length) / Math.Max(1, source.Size));
                if (throttle is not null)
                {
                    await throttle.WaitAsync(length, async, cancellationToken).ConfigureAwait(false);
                }

                // Whether a zero granule at this source position must be written anyway (-S): it is
                // stored data with -S 0, or a larger aligned -S block around it holds data.
                bool Keep(long targetOffset, int count)
                {
                    var at = targetOffset - shift;
                    if (stored is not null)
                    {
                        return ByteRanges.Overlaps(stored, at, at + count);
                    }

                    if (zeroBlock <= granularity)
                    {
                        return false;
                    }

                    var blockStart = Math.Max(position, at / zeroBlock * zeroBlock);
                    var blockEnd = Math.Min(position + length, (at / zeroBlock * zeroBlock) + zeroBlock);
                    return data.Span[(int)(blockStart - position)..(int)(blockEnd - position)].ContainsAnyExcept((byte)0);
                }
            }

            await target.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            options.Progress?.Report(1);
        }
        finally
        {
            if (reading is not null)
            {
                await reading.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default).ConfigureAwait(false);
            }

            ArrayPool<byte>.Shared.Return(current);
            ArrayPool<byte>.Shared.Return(next);
            ArrayPool<byte>.Shared.Return(before);
        }
    }

    /// <summary>Target ranges as source positions: shifted back by the source's offset in the target, cut to the source.</summary>
    private static List<(long Start, long End)> ToSource(List<(long Start, long End)> ranges, long shift, long size) =>
        [.. ranges.Select(r => (Math.Max(r.Start - shift, 0), Math.Min(r.End - shift, size))).Where(r => r.Item1 < r.Item2)];

    /// <summary>Keeps a copy at or under a byte rate (qemu-img convert -r): sleeps when ahead of it.</summary>
    private sealed class Throttle(long bytesPerSecond)
    {
        private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
        private long _bytes;

        public async ValueTask WaitAsync(long bytes, bool async, CancellationToken cancellationToken)
        {
            _bytes += bytes;
            var ahead = TimeSpan.FromSeconds((double)_bytes / Math.Max(1, bytesPerSecond)) - _clock.Elapsed;
            if (ahead > TimeSpan.Zero)
            {
                if (async)
                {
                    await Task.Delay(ahead, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    Thread.Sleep(ahead);
                }
            }
        }
    }

    /// <summary>The ranges cut at <paramref name="chunkSize"/> boundaries.</summary>
    private static IEnumerable<(long Position, int Length)> Chunks(List<(long Start, long End)> ranges, int chunkSize)
    {
        foreach (var (start, end) in ranges)
        {
            for (var position = start; position < end;)
            {
                var next = Math.Min(end, (position / chunkSize * chunkSize) + chunkSize);
                yield return (position, (int)(next - position));
                position = next;
            }
        }
    }

    /// <summary>
    /// Starts reading one chunk of the source and, when <paramref name="hash"/>, fingerprinting its
    /// clusters for the target's allocator (dedup's SHA-256) — on the thread pool, so that both
    /// overlap the writes of the previous chunk. Returns the fingerprints (null: none wanted).
    /// </summary>
    private static Task<ClusterFingerprint?[]?> ReadChunkAsync(DiskSource source, CopyTarget target, (long Position, int Length) chunk, long shift, byte[] buffer, bool hash, ImageCopyOptions options, List<(long Start, long End)> unknownStatus, bool async, CancellationToken cancellationToken)
    {
        var data = buffer.AsMemory(0, chunk.Length);
        return async ? ReadAndHashAsync() : Task.Run(() => ReadAndHash(), cancellationToken);

        async Task<ClusterFingerprint?[]?> ReadAndHashAsync()
        {
            await ReadAsync(source, chunk.Position, data, options, unknownStatus, async: true, cancellationToken).ConfigureAwait(false);
            return hash ? await Task.Run(() => target.Fingerprint(shift + chunk.Position, data), cancellationToken).ConfigureAwait(false) : null;
        }

        ClusterFingerprint?[]? ReadAndHash()
        {
            SyncOver.Run(ReadAsync(source, chunk.Position, data, options, unknownStatus, async: false, cancellationToken));
            return hash ? target.Fingerprint(shift + chunk.Position, data) : null;
        }
    }

    /// <summary>
    /// Writes each granule of <paramref name="chunk"/> that differs from what the target reads
    /// there (<paramref name="targetReads"/>; null: zeros). Consecutive granules of data go out as
    /// one write (one lock round and, with dedup, their hashes computed in parallel); whole
    /// clusters to compress are compressed on every core, then linked.
    /// </summary>
    private static async ValueTask WriteDifferencesAsync(CopyTarget target, long position, ReadOnlyMemory<byte> chunk, ReadOnlyMemory<byte>? targetReads, ClusterFingerprint?[]? fingerprints, bool compress, Func<long, int, bool> keepZeros, bool async, CancellationToken cancellationToken)
    {
        var granularity = target.Granularity;
        var runStart = 0;
        var runLength = 0;
        List<(long Offset, ReadOnlyMemory<byte> Data)>? toCompress = null;
        for (var done = 0; done < chunk.Length;)
        {
            var offset = position + done;
            var inGranule = (int)(offset % granularity);
            var count = Math.Min(granularity - inGranule, chunk.Length - done);
            var piece = chunk.Slice(done, count);
            var hasData = piece.Span.ContainsAnyExcept((byte)0) || keepZeros(offset, count);
            var differs = targetReads is { } reads ? !piece.Span.SequenceEqual(reads.Span.Slice(done, count)) : hasData;
            var wholeCluster = inGranule == 0 && (count == granularity || offset + count == target.Size);
            if (!differs || !hasData || (compress && wholeCluster))
            {
                await WriteRunAsync().ConfigureAwait(false);
                if (!differs)
                {
                    // the target reads these bytes already
                }
                else if (!hasData)
                {
                    await target.WriteZeroesAsync(offset, count, async, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    (toCompress ??= []).Add((offset, piece));
                }
            }
            else
            {
                if (runLength == 0)
                {
                    runStart = done;
                }

                runLength += count;
            }

            done += count;
        }

        await WriteRunAsync().ConfigureAwait(false);
        if (toCompress is not null)
        {
            await WriteCompressedAsync(target, toCompress, async, cancellationToken).ConfigureAwait(false);
        }

        // The chunk's fingerprints belong to its i-th cluster; a run's, to the clusters it touches.
        ClusterFingerprint?[]? RunFingerprints(int start, int length)
        {
            if (fingerprints is null)
            {
                return null;
            }

            var first = (int)(((position + start) / granularity) - (position / granularity));
            var last = (int)(((position + start + length - 1) / granularity) - (position / granularity));
            return fingerprints[first..(last + 1)];
        }

        async ValueTask WriteRunAsync()
        {
            if (runLength > 0)
            {
                await target.WriteAsync(position + runStart, chunk.Slice(runStart, runLength), RunFingerprints(runStart, runLength), async, cancellationToken).ConfigureAwait(false);
                runLength = 0;
            }
        }
    }

    /// <summary>Compresses and writes whole clusters on every core (each is placed and linked under the image's own locks).</summary>
    private static async ValueTask WriteCompressedAsync(CopyTarget target, List<(long Offset, ReadOnlyMemory<byte> Data)> clusters, bool async, CancellationToken cancellationToken)
    {
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount, CancellationToken = cancellationToken };
        if (async)
        {
            await Parallel.ForEachAsync(clusters, parallel, (cluster, token) => target.WriteAsync(cluster.Offset, cluster.Data, compress: true, async: true, token)).ConfigureAwait(false);
        }
        else
        {
            Parallel.ForEach(clusters, parallel, cluster => SyncOver.Run(target.WriteAsync(cluster.Offset, cluster.Data, compress: true, async: false, cancellationToken)));
        }
    }

    /// <summary>Where a copy goes: the operations the copy loop needs, sync or async.</summary>
    private abstract class CopyTarget
    {
        /// <summary>The unit of comparison and writing (the cluster size of a qcow2 target).</summary>
        public abstract int Granularity { get; }

        public abstract long Size { get; }

        public abstract ValueTask PrepareAsync(long sourceSize, bool async, CancellationToken cancellationToken);

        /// <summary>Ranges where the target reads something other than zeros before anything is written.</summary>
        public abstract ValueTask<List<(long Start, long End)>> ShownRangesAsync(bool async, CancellationToken cancellationToken);

        public abstract ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken);

        public abstract ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool compress, bool async, CancellationToken cancellationToken);

        /// <summary>Writes uncompressed data whose clusters' fingerprints were computed ahead (null: none).</summary>
        public virtual ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, ClusterFingerprint?[]? fingerprints, bool async, CancellationToken cancellationToken) =>
            WriteAsync(offset, data, compress: false, async, cancellationToken);

        /// <summary>The allocator's fingerprints of <paramref name="data"/>'s whole clusters, or null when it wants none. Any thread.</summary>
        public virtual ClusterFingerprint?[]? Fingerprint(long offset, ReadOnlyMemory<byte> data) => null;

        public abstract ValueTask WriteZeroesAsync(long offset, int count, bool async, CancellationToken cancellationToken);

        public abstract ValueTask FlushAsync(bool async, CancellationToken cancellationToken);
    }

    private sealed class QcowTarget(Qcow2Image image, ImageCopyOptions options) : CopyTarget
    {
        public override int Granularity => image.ClusterSize;

        public override long Size => image.Size;

        public override ValueTask PrepareAsync(long sourceSize, bool async, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public override async ValueTask<List<(long Start, long End)>> ShownRangesAsync(bool async, CancellationToken cancellationToken)
        {
            if (image.Header.BackingFileName is null && !options.TargetHasData)
            {
                return [];
            }

            var map = async ? await image.GetMapAsync(0, image.Size, cancellationToken).ConfigureAwait(false) : image.GetMap(0, image.Size);
            return ByteRanges.Granules(map, image.Size, image.ClusterSize);
        }

        public override ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
        {
            if (async)
            {
                return image.ReadAsync(offset, buffer, cancellationToken);
            }

            image.Read(offset, buffer.Span);
            return ValueTask.CompletedTask;
        }

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, ClusterFingerprint?[]? fingerprints, bool async, CancellationToken cancellationToken) =>
            fingerprints is null ? WriteAsync(offset, data, compress: false, async, cancellationToken) : image.WriteCoreAsync(offset, data, fingerprints, async, cancellationToken);

        public override ClusterFingerprint?[]? Fingerprint(long offset, ReadOnlyMemory<byte> data) => image.FingerprintForWrite(offset, data);

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool compress, bool async, CancellationToken cancellationToken)
        {
            if (compress && async)
            {
                return image.WriteCompressedAsync(offset, data, cancellationToken);
            }
            else if (compress)
            {
                image.WriteCompressed(offset, data.Span);
            }
            else if (async)
            {
                return image.WriteAsync(offset, data, cancellationToken);
            }
            else
            {
                image.Write(offset, data.Span);
            }

            return ValueTask.CompletedTask;
        }

        public override ValueTask WriteZeroesAsync(long offset, int count, bool async, CancellationToken cancellationToken)
        {
            // Hides backing data: zero clusters, or zero data on v2.
            if (async)
            {
                return image.WriteZeroesAsync(offset, count, cancellationToken: cancellationToken);
            }

            image.WriteZeroes(offset, count);
            return ValueTask.CompletedTask;
        }

        public override ValueTask FlushAsync(bool async, CancellationToken cancellationToken)
        {
            if (async)
            {
                return image.FlushAsync(cancellationToken);
            }

            image.Flush();
            return ValueTask.CompletedTask;
        }
    }

    private sealed class RawTarget(IStorage storage, ImageCopyOptions options) : CopyTarget
    {
        private long _size;

        /// <summary>A file system block: smaller zero runs are not worth a hole.</summary>
        public override int Granularity => 4096;

        public override long Size => _size;

        public override ValueTask PrepareAsync(long sourceSize, bool async, CancellationToken cancellationToken)
        {
            ArgumentNullException.ThrowIfNull(storage);
            if (options.TargetHasData)
            {
                _size = storage.Length; // an existing file keeps its length; what it holds is compared
                if (_size < sourceSize)
                {
                    throw new ArgumentException($"The target ({_size} bytes) is smaller than the source ({sourceSize} bytes).", nameof(sourceSize));
                }

                return ValueTask.CompletedTask;
            }

            _size = Math.Max(sourceSize, options.TargetOffset == 0 ? 0 : storage.Length);
            storage.SetLength(_size);
            return ValueTask.CompletedTask;
        }

        public override ValueTask<List<(long Start, long End)>> ShownRangesAsync(bool async, CancellationToken cancellationToken) =>
            ValueTask.FromResult(options.TargetHasData ? [(0L, _size)] : new List<(long Start, long End)>()); // a new raw target reads zeros everywhere

        public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
        {
            buffer.Span.Clear();
            if (options.TargetHasData)
            {
                await storage.ReadZeroFilledAsync(offset, buffer, async, cancellationToken).ConfigureAwait(false);
            }
        }

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool compress, bool async, CancellationToken cancellationToken) =>
            storage.WriteAsync(offset, data, async, cancellationToken);

        public override ValueTask WriteZeroesAsync(long offset, int count, bool async, CancellationToken cancellationToken) =>
            storage.WriteAsync(offset, new byte[count], async, cancellationToken); // only where an existing file held data

        public override ValueTask FlushAsync(bool async, CancellationToken cancellationToken) =>
            storage.FlushAsync(async, cancellationToken);
    }
}
