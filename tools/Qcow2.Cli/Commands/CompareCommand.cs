using System.Buffers;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 compare [-f FMT] [-F FMT] [-s] A B — exit 0 when the guest contents are equal, 1 when they
/// differ, 2 on error. A shorter image compares as if padded with zeros, like qemu-img (unless -s).
/// </summary>
internal static class CompareCommand
{
    public const string Usage = "qcow2 compare [-f FMT] [-F FMT] [-s] [-p] A B";
    private const int ChunkSize = 1 << 20;

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-F"], ["-s", "-p", "-q", "-U", "--force-share"]);
        line.ExpectPositionals(2, 2, Usage);
        using var first = DiskSource.Open(line.Positionals[0], line.Value("-f"), ImageOptions.For(line, line.Positionals[0]));
        using var second = DiskSource.Open(line.Positionals[1], line.Value("-F"), ImageOptions.For(line, line.Positionals[1]));
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
        var mismatch = FindMismatch(first, second, progress);
        progress.Finish();
        if (mismatch is long offset)
        {
            Say(quiet, $"Content mismatch at offset {offset}!");
            return 1;
        }

        Say(quiet, "Images are identical.");
        return 0;
    }

    /// <summary>First differing guest byte, or null.</summary>
    public static long? FindMismatch(DiskSource first, DiskSource second, Progress? progress = null)
    {
        var size = Math.Max(first.Size, second.Size);
        var a = ArrayPool<byte>.Shared.Rent(ChunkSize);
        var b = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            for (long position = 0; position < size; position += ChunkSize)
            {
                var length = (int)Math.Min(ChunkSize, size - position);
                ReadPadded(first, position, a.AsSpan(0, length));
                ReadPadded(second, position, b.AsSpan(0, length));
                var differs = a.AsSpan(0, length).CommonPrefixLength(b.AsSpan(0, length));
                if (differs < length)
                {
                    return position + differs;
                }

                progress?.Report((double)(position + length) / size);
            }

            return null;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(a);
            ArrayPool<byte>.Shared.Return(b);
        }
    }

    private static void ReadPadded(DiskSource source, long position, Span<byte> buffer)
    {
        var inside = (int)Math.Clamp(source.Size - position, 0, buffer.Length);
        if (inside > 0)
        {
            source.Read(position, buffer[..inside]);
        }

        buffer[inside..].Clear();
    }

    private static void Say(bool quiet, string message)
    {
        if (!quiet)
        {
            Console.Out.WriteLine(message);
        }
    }
}
