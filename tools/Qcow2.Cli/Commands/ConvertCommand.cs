using System.Buffers;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 convert [-f FMT] -O raw|qcow2 [-c] [-o OPTIONS] [-p] SRC DST</summary>
internal static class ConvertCommand
{
    public const string Usage = "qcow2 convert [-f FMT] [-O raw|qcow2] [-c] [-o OPTIONS] [-p] [-q] SRC DST";
    private const int ChunkSize = 2 << 20;

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-O", "-o"], ["-p", "-c", "-q", .. ImageOptions.ForceShareFlags]);
        line.ExpectPositionals(2, 2, Usage);
        var target = line.Value("-O") ?? "raw";
        using var source = DiskSource.Open(line.Positionals[0], line.Value("-f"), ImageOptions.For(line, line.Positionals[0]));
        FileArguments.CheckOutput(line.Positionals[1]);
        if (source.UsesFile(line.Positionals[1]))
        {
            // Refused by identity, not only by the source's lock: with locking off or force-share
            // nothing else would stop the output from truncating the source it is read from.
            throw new IOException($"Could not create '{line.Positionals[1]}': it is the source image or a file the source reads (its backing or data file)");
        }

        var progress = new Progress(line.Has("-p") && !line.Has("-q"));
        switch (target)
        {
            case "raw":
                if (line.Has("-c") || line.Values("-o").Count > 0)
                {
                    throw new UsageException("-c and -o apply to -O qcow2 only");
                }

                ToRaw(source, line.Positionals[1], progress);
                break;
            case "qcow2":
                var parser = new CreateOptionParser(line.Values("-o"), Extensions.CreateOptionKeys);
                var options = parser.Build(source.Size, backingFile: null, backingFormat: null);
                if (options.DataFile is { } dataFile && source.UsesFile(DefaultBackingFileResolver.ResolvePath(dataFile, FilePaths.Absolute(line.Positionals[1]))))
                {
                    // Creating the data file empties it; with -U no lock of the source's would stop that.
                    throw new IOException($"Could not create the data file '{dataFile}': it is the source image or a file the source reads (its backing or data file)");
                }

                using (var image = Extensions.Create(line.Positionals[1], options with { Size = source.Size }, parser))
                {
                    ToQcow2(source, image, line.Has("-c"), progress);
                    if (!line.Has("-q") && image.GetExtension<DedupExtension>() is { State: DedupIndexState.Active })
                    {
                        progress.Finish();
                        Console.Out.WriteLine(DedupCommand.Summary(image.GetDedupStatistics()));
                    }
                }

                break;
            default:
                throw new UsageException($"output format '{target}' is not supported; use raw or qcow2");
        }

        progress.Finish();
        return 0;
    }

    /// <summary>Copies every non-zero byte of the source into a sparse raw file.</summary>
    private static void ToRaw(DiskSource source, string destination, Progress progress)
    {
        using var output = FileStorage.Create(destination);
        output.SetLength(source.Size);
        CopyData(source, progress, granularity: 4096, (position, chunk) => output.Write(position, chunk));
        output.Flush();
    }

    /// <summary>
    /// Writes into a fresh image every cluster where it does not already read the source's bytes.
    /// Without a backing file it reads zeros, so the source's non-zero clusters are written and its
    /// zero clusters stay unallocated. With one, the backing file shows through wherever nothing is
    /// written: clusters where it holds the source's bytes stay unallocated, and where the source
    /// is zero over backing data, zeros are written (zero clusters on v3). With
    /// <paramref name="compress"/> each cluster is stored compressed unless it does not shrink
    /// (then plainly, like qemu-img).
    /// </summary>
    private static void ToQcow2(DiskSource source, Qcow2Image image, bool compress, Progress progress)
    {
        var clusterSize = image.ClusterSize;
        // Where the new image reads something other than zeros before anything is written: its backing file's data.
        var shown = image.Header.BackingFileName is null ? [] : Granules(image.GetMap(0, image.Size), image.Size, clusterSize);
        var ranges = Union(Granules(source.Map(0, source.Size), source.Size, clusterSize), shown);
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        var current = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            foreach (var (start, end) in ranges)
            {
                for (var position = start; position < end;)
                {
                    var next = Math.Min(end, (position / ChunkSize * ChunkSize) + ChunkSize);
                    var chunk = buffer.AsSpan(0, (int)(next - position));
                    var before = current.AsSpan(0, chunk.Length);
                    source.Read(position, chunk);
                    if (Overlaps(shown, position, next))
                    {
                        image.Read(position, before);
                    }
                    else
                    {
                        before.Clear();
                    }

                    WriteDifferences(image, position, chunk, before, compress);
                    position = next;
                    progress.Report((double)position / Math.Max(1, source.Size));
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            ArrayPool<byte>.Shared.Return(current);
        }
    }

    /// <summary>Writes each cluster of <paramref name="chunk"/> that differs from what the image reads there (<paramref name="before"/>).</summary>
    private static void WriteDifferences(Qcow2Image image, long position, ReadOnlySpan<byte> chunk, ReadOnlySpan<byte> before, bool compress)
    {
        var clusterSize = image.ClusterSize;
        for (var done = 0; done < chunk.Length;)
        {
            var offset = position + done;
            var inCluster = (int)(offset % clusterSize);
            var count = Math.Min(clusterSize - inCluster, chunk.Length - done);
            var piece = chunk.Slice(done, count);
            if (!piece.SequenceEqual(before.Slice(done, count)))
            {
                if (!piece.ContainsAnyExcept((byte)0))
                {
                    image.WriteZeroes(offset, count); // hides backing data: zero clusters, or zero data on v2
                }
                else if (compress && inCluster == 0 && (count == clusterSize || offset + count == image.Size))
                {
                    image.WriteCompressed(offset, piece);
                }
                else
                {
                    image.Write(offset, piece);
                }
            }

            done += count;
        }
    }

    private static bool Overlaps(List<(long Start, long End)> ranges, long start, long end) =>
        ranges.Any(r => r.Start < end && start < r.End);

    /// <summary>Merges two sorted lists of disjoint ranges into one.</summary>
    private static List<(long Start, long End)> Union(List<(long Start, long End)> first, List<(long Start, long End)> second)
    {
        var merged = new List<(long Start, long End)>();
        foreach (var (start, end) in first.Concat(second).OrderBy(r => r.Start))
        {
            if (merged.Count > 0 && merged[^1].End >= start)
            {
                merged[^1] = (merged[^1].Start, Math.Max(merged[^1].End, end));
            }
            else
            {
                merged.Add((start, end));
            }
        }

        return merged;
    }

    /// <summary>
    /// Reads the source in chunks aligned to <paramref name="granularity"/> (the target's cluster
    /// size), skipping ranges its map reports as zeros, and hands every chunk holding data to
    /// <paramref name="write"/>.
    /// </summary>
    private static void CopyData(DiskSource source, Progress progress, int granularity, ChunkWriter write)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            foreach (var (start, end) in DataRanges(source, granularity))
            {
                for (var position = start; position < end;)
                {
                    var next = Math.Min(end, (position / ChunkSize * ChunkSize) + ChunkSize);
                    var chunk = buffer.AsSpan(0, (int)(next - position));
                    source.Read(position, chunk);
                    if (chunk.ContainsAnyExcept((byte)0))
                    {
                        write(position, chunk);
                    }

                    position = next;
                    progress.Report((double)position / Math.Max(1, source.Size));
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Ranges the map does not report as zeros, widened to whole granules and merged.</summary>
    private static List<(long Start, long End)> DataRanges(DiskSource source, int granularity) =>
        Granules(source.Map(0, source.Size), source.Size, granularity);

    /// <summary>Ranges of <paramref name="map"/> not reported as zeros, widened to whole granules (at most <paramref name="size"/>) and merged.</summary>
    private static List<(long Start, long End)> Granules(IEnumerable<MapEntry> map, long size, int granularity)
    {
        var ranges = new List<(long Start, long End)>();
        foreach (var entry in map.Where(e => !e.Zero))
        {
            var start = entry.Start / granularity * granularity;
            var end = Math.Min(size, (entry.End + granularity - 1) / granularity * granularity);
            if (ranges.Count > 0 && ranges[^1].End >= start)
            {
                ranges[^1] = (ranges[^1].Start, Math.Max(ranges[^1].End, end));
            }
            else
            {
                ranges.Add((start, end));
            }
        }

        return ranges;
    }

    private delegate void ChunkWriter(long position, ReadOnlySpan<byte> chunk);
}
