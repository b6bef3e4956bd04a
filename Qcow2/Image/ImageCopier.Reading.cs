namespace QcowDedup.Qcow2.Image;

/// <summary>Reading the source: its map and its data, read around what cannot be read when salvaging.</summary>
public static partial class ImageCopier
{
    /// <summary>
    /// Reads from the source; with <see cref="ImageCopyOptions.OnReadError"/> set (qemu-img convert
    /// --salvage), a failed read is retried 512 bytes at a time and each sector that still fails
    /// reads as zeros and is reported.
    /// </summary>
    private static async ValueTask ReadAsync(DiskSource source, long position, Memory<byte> data, ImageCopyOptions options, List<(long Start, long End)> unknownStatus, bool async, CancellationToken cancellationToken)
    {
        var end = position + data.Length;
        if (!ByteRanges.Overlaps(unknownStatus, position, end))
        {
            try
            {
                await source.ReadAsync(position, data, async, cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (Exception error) when (options.OnReadError is not null && IsReadFailure(error))
            {
            }
        }

        for (var done = 0; done < data.Length; done += 512)
        {
            var sector = data.Slice(done, Math.Min(512, data.Length - done));
            if (ByteRanges.Overlaps(unknownStatus, position + done, position + done + sector.Length))
            {
                // qemu-img asks a sector's status again just before copying it, and warns with what
                // that second answer says.
                await ReportStatusAgainAsync(source, position + done, sector.Length, options, async, cancellationToken).ConfigureAwait(false);
            }

            try
            {
                await source.ReadAsync(position + done, sector, async, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception error) when (IsReadFailure(error))
            {
                if (options.OnReadError is null)
                {
                    throw;
                }

                sector.Span.Clear();
                options.OnReadError(position + done, error);
            }
        }
    }

    /// <summary>Asks the source's map for a sector whose status failed before, and reports the error it gives now (if any).</summary>
    private static async ValueTask ReportStatusAgainAsync(DiskSource source, long offset, int length, ImageCopyOptions options, bool async, CancellationToken cancellationToken)
    {
        try
        {
            _ = async ? await source.GetMapAsync(offset, length, cancellationToken).ConfigureAwait(false) : source.GetMap(offset, length);
        }
        catch (Exception error) when (IsReadFailure(error))
        {
            options.OnStatusError!(offset, error);
        }
    }

    /// <summary>What salvage copies past: a file's read error or a table the image cannot trust.</summary>
    private static bool IsReadFailure(Exception error) => error is IOException or InvalidDataException;

    /// <summary>
    /// The source's map. With <see cref="ImageCopyOptions.OnStatusError"/> (salvage) a range whose
    /// map cannot be read is asked again in quarters, down to single 512-byte sectors; a sector
    /// that still fails is reported, noted in <paramref name="unknownStatus"/> and read as data,
    /// as qemu-img convert --salvage does.
    /// </summary>
    private static async ValueTask<IReadOnlyList<MapEntry>> ReadMapAsync(DiskSource source, ImageCopyOptions options, List<(long Start, long End)> unknownStatus, bool async, CancellationToken cancellationToken)
    {
        async ValueTask<IReadOnlyList<MapEntry>> Map(long offset, long length) =>
            async ? await source.GetMapAsync(offset, length, cancellationToken).ConfigureAwait(false) : source.GetMap(offset, length);

        if (options.OnStatusError is null)
        {
            return await Map(0, source.Size).ConfigureAwait(false);
        }

        var entries = new List<MapEntry>();
        var position = 0L;
        var step = source.Size;
        while (position < source.Size)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var length = Math.Min(step, source.Size - position);
            try
            {
                entries.AddRange(await Map(position, length).ConfigureAwait(false));
                position += length;
                step = source.Size;
            }
            catch (Exception error) when (IsReadFailure(error))
            {
                if (length > 512)
                {
                    step = Math.Max(512, ((length + 3) / 4 + 511) / 512 * 512);
                    continue;
                }

                options.OnStatusError(position, error);
                if (unknownStatus.Count > 0 && unknownStatus[^1].End == position)
                {
                    unknownStatus[^1] = (unknownStatus[^1].Start, position + length);
                }
                else
                {
                    unknownStatus.Add((position, position + length));
                }

                entries.Add(new MapEntry(position, length, 0, Present: true, Zero: false, Data: true, Offset: null, File: null));
                position += length;
                step = source.Size;
            }
        }

        return entries;
    }
}
