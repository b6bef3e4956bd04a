using System.Buffers;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 convert [-f FMT] -O raw [-p] SRC DST</summary>
internal static class ConvertCommand
{
    public const string Usage = "qcow2 convert [-f FMT] -O raw|qcow2 [-c] [-o OPTIONS] [-p] SRC DST";
    private const int ChunkSize = 2 << 20;

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-O", "-o"], ["-p", "-c", "-U", "--force-share"]);
        line.ExpectPositionals(2, 2, Usage);
        var target = line.Value("-O") ?? "raw";
        if (target != "raw")
        {
            throw new UsageException($"output format '{target}' is not supported; use -O raw");
        }

        using var source = DiskSource.Open(line.Positionals[0], line.Value("-f"));
        var progress = new Progress(line.Has("-p"));
        ToRaw(source, line.Positionals[1], progress);
        progress.Finish();
        return 0;
    }

    /// <summary>Copies every non-zero byte of the source into a sparse raw file.</summary>
    private static void ToRaw(DiskSource source, string destination, Progress progress)
    {
        using var output = FileStorage.Create(destination);
        output.SetLength(source.Size);
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            foreach (var entry in source.Map(0, source.Size))
            {
                if (entry.Zero)
                {
                    progress.Report((double)entry.End / Math.Max(1, source.Size));
                    continue;
                }

                for (var position = entry.Start; position < entry.End; position += ChunkSize)
                {
                    var length = (int)Math.Min(ChunkSize, entry.End - position);
                    var chunk = buffer.AsSpan(0, length);
                    source.Read(position, chunk);
                    if (chunk.ContainsAnyExcept((byte)0))
                    {
                        output.Write(position, chunk);
                    }

                    progress.Report((double)(position + length) / source.Size);
                }
            }

            output.Flush();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
