using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 compare [-f FMT] [-F FMT] [-s] A B — exit 0 when the guest contents are equal, 1 when they
/// differ, 2 on error. A shorter image compares as if padded with zeros, like qemu-img (unless -s).
/// </summary>
internal static class CompareCommand
{
    public const string Usage = "qcow2 compare [-f FMT] [-F FMT] [-T SRC_CACHE] [-s] [-p] A B";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-F", "-T"], ["-s", "-p", "-q", "-U", "--force-share"], ImageArguments.FirstTwo);
        ImageOptions.CheckCacheModes(line, exitCode: 2);
        line.ExpectPositionals(2, 2, Usage);
        using var first = Disks.Open(line.Positionals[0], line.Value("-f"), ImageOptions.For(line, line.Positionals[0]));
        using var second = Disks.Open(line.Positionals[1], line.Value("-F"), ImageOptions.For(line, line.Positionals[1]));
        var quiet = line.Has("-q");
        if (first.Size != second.Size)
        {
            if (line.Has("-s"))
            {
                Say(quiet, "Strict mode: Image size mismatch!");
                return 1;
            }

            Say(quiet, "Warning: Image size mismatch!");
        }

        var progress = new Progress(line.Has("-p"));
        var mismatch = DiskComparer.FindFirstDifference(first, second, progress);
        progress.Finish();

        // Strict: QEMU compares each chunk's block status before its contents, so a status
        // mismatch at or before the first differing byte is what it reports.
        if (line.Has("-s") && BlockStatus.FirstMismatch(first, second) is long status && (mismatch is not long content || status <= content))
        {
            Say(quiet, $"Strict mode: Offset {status} block status mismatch!");
            return 1;
        }

        if (mismatch is long offset)
        {
            Say(quiet, $"Content mismatch at offset {offset}!");
            return 1;
        }

        Say(quiet, "Images are identical.");
        return 0;
    }

    private static void Say(bool quiet, string message)
    {
        if (!quiet)
        {
            Console.Out.WriteLine(message);
        }
    }
}

/// <summary>
/// QEMU's block status of a disk, as qemu-img compare -s walks it: at each offset a status word
/// and how far it holds. The word is read from the map (data, zero, allocated, host offset valid,
/// compressed) plus QEMU's EOF bit for an answer that reaches the end of the disk; a qcow2 image
/// answers at most up to the end of one L2 table, and an unallocated range without a backing file
/// reads as zero without being allocated, while a raw file's hole is allocated zeros.
/// </summary>
internal static class BlockStatus
{
    private const int Data = 0x01;
    private const int Zero = 0x02;
    private const int OffsetValid = 0x04;
    private const int Allocated = 0x10;
    private const int EndOfFile = 0x20;
    private const int Compressed = 0x80;

    /// <summary>The first offset where the two disks' status words differ, walked as qemu-img compare does; null when none does.</summary>
    public static long? FirstMismatch(DiskSource first, DiskSource second)
    {
        var a = Answers(first);
        var b = Answers(second);
        var size = Math.Min(first.Size, second.Size);
        for (var offset = 0L; offset < size;)
        {
            var (flagsA, endA) = At(a, offset);
            var (flagsB, endB) = At(b, offset);
            if (flagsA != flagsB)
            {
                return offset;
            }

            offset = Math.Min(endA, endB);
        }

        return null;
    }

    /// <summary>The status word at <paramref name="offset"/> and where it stops holding.</summary>
    private static (int Flags, long End) At(List<(long Start, long End, int Flags)> answers, long offset)
    {
        var low = 0;
        var high = answers.Count - 1;
        while (low < high)
        {
            var middle = (low + high + 1) / 2;
            if (answers[middle].Start <= offset)
            {
                low = middle;
            }
            else
            {
                high = middle - 1;
            }
        }

        var answer = answers[low];
        return (answer.Flags, answer.End);
    }

    private static List<(long Start, long End, int Flags)> Answers(DiskSource disk)
    {
        var image = disk.Image;
        var boundary = image is null ? long.MaxValue
            : (long)image.ClusterSize * (image.ClusterSize / ((image.Header.Header.Incompatible & QcowDedup.Qcow2.Format.IncompatibleFeatures.ExtendedL2) != 0 ? 16 : 8));
        var answers = new List<(long, long, int)>();
        foreach (var entry in disk.GetMap(0, disk.Size))
        {
            var flags = image is null ? (entry.Data ? Data : Zero) | OffsetValid | Allocated
                : !entry.Present ? Zero | (entry.Offset is null ? 0 : OffsetValid) // an unallocated subcluster of an allocated cluster keeps its host offset
                : entry.Data ? Data | Allocated | (entry.Offset is null ? Compressed : OffsetValid)
                : Zero | Allocated | (entry.Offset is null ? 0 : OffsetValid);
            for (var start = entry.Start; start < entry.End;)
            {
                var end = Math.Min(entry.End, (start / boundary * boundary) + boundary);
                var eof = end == disk.Size && (entry.Depth == 0 || (flags & Allocated) == 0) ? EndOfFile : 0; // a backing file's answer loses its EOF bit
                answers.Add((start, end, flags | eof));
                start = end;
            }
        }

        return answers;
    }
}

