using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 dd — qemu-img dd: copies a range of a disk, in blocks of bs bytes, into a new image. The
/// output holds count blocks (or the whole input) less the skipped ones, counted as qemu-img counts them.
/// </summary>
internal static class DdCommand
{
    public const string Usage = "qcow2 dd [-U] [-f FMT] [-O qcow2|raw] [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-O"], [.. ImageOptions.ForceShareFlags], ImageArguments.DdInput);
        long blockSize = 512;
        long? count = null;
        long? skip = null;
        string? input = null;
        string? output = null;
        foreach (var operand in line.Positionals)
        {
            var equals = operand.IndexOf('=', StringComparison.Ordinal);
            var (key, value) = equals < 0 ? (operand, string.Empty) : (operand[..equals], operand[(equals + 1)..]);
            switch (key)
            {
                case "bs":
                    blockSize = Sizes.Cvtnum("bs", value, int.MaxValue, min: 1);
                    break;
                case "count":
                    count = Sizes.Cvtnum("count", value);
                    break;
                case "skip":
                    skip = Sizes.Cvtnum("skip", value);
                    break;
                case "if":
                    input = value;
                    break;
                case "of":
                    output = value;
                    break;
                default:
                    throw new QemuArgumentError($"unrecognized operand {key}");
            }
        }

        if (input is null || output is null)
        {
            throw new QemuArgumentError("Must specify both input and output files");
        }

        var format = line.Value("-O") ?? "raw";
        if (format is not ("raw" or "qcow2"))
        {
            throw new QemuArgumentError("Unknown file format"); // qemu-img dd says no more
        }

        using var source = Disks.Open(input, line.Value("-f"), ImageOptions.For(line, input));
        ImageCopier.ThrowIfSourceFile(source, output);

        // qemu-img's arithmetic: count blocks cap the size; skipped blocks then come off it.
        var size = source.Size;
        if (count is { } blocks && blocks <= long.MaxValue / blockSize && blocks * blockSize < size)
        {
            size = blocks * blockSize;
        }

        long position;
        if (skip is { } skipped && (skipped > long.MaxValue / blockSize || size < skipped * blockSize))
        {
            Console.Error.WriteLine($"qcow2: {input}: cannot skip to specified offset");
            position = size;
        }
        else
        {
            position = (skip ?? 0) * blockSize;
        }

        FileArguments.CheckOutput(output);
        var length = size - position;
        if (format == "qcow2")
        {
            using var image = Qcow2Image.Create(output, new Qcow2CreateOptions { Size = length });
            Copy(source, position, length, blockSize, (offset, data) => image.Write(offset, data));
        }
        else
        {
            using var file = FileStorage.Create(output);
            file.SetLength(length);
            Copy(source, position, length, blockSize, (offset, data) => file.Write(offset, data));
            file.Flush();
        }

        return 0;
    }

    /// <summary>Block by block; blocks of zeros are left to read as zeros (the output is new).</summary>
    private static void Copy(DiskSource source, long from, long length, long blockSize, Action<long, ReadOnlySpan<byte>> write)
    {
        var buffer = new byte[Math.Min(Math.Max(blockSize, 1 << 20) / blockSize * blockSize, int.MaxValue / 2)];
        for (var done = 0L; done < length;)
        {
            var chunk = (int)Math.Min(buffer.Length, length - done);
            source.Read(from + done, buffer.AsSpan(0, chunk));
            for (var at = 0; at < chunk; at += 65536)
            {
                var piece = buffer.AsSpan(at, Math.Min(65536, chunk - at));
                if (piece.ContainsAnyExcept((byte)0))
                {
                    write(done + at, piece);
                }
            }

            done += chunk;
        }
    }
}
