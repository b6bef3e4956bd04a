using System.Diagnostics;
using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 io [-f qcow2] [-r] -c CMD [-c CMD …] FILE — a qemu-io subset with the same syntax and
/// messages: write [-P PATTERN] [-z] [-u] [-c] OFF LEN, read [-P PATTERN] OFF LEN, discard OFF LEN,
/// flush. A failed pattern check makes the exit code 1, as in qemu-io.
/// </summary>
internal static class IoCommand
{
    public const string Usage = "qcow2 io [-f qcow2] [-r] -c 'write [-P PATTERN] [-z] [-u] [-c] OFF LEN' -c 'read [-P PATTERN] OFF LEN' -c 'discard OFF LEN' -c flush FILE";
    private const byte DefaultWritePattern = 0xcd;

    /// <summary>qemu-io's BDRV_REQUEST_MAX_BYTES: the largest read or write one command may ask for.</summary>
    private const long MaxRequestBytes = int.MaxValue / 512 * 512;

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-c"], ["-r", "-q", .. ImageOptions.ForceShareFlags], ImageArguments.First);
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 images are supported, not '{format}'");
        }

        var commands = line.Values("-c").Select(ParseCommand).ToList();
        using var image = FileArguments.OpenImage(line.Positionals[0], ImageOptions.For(line, line.Positionals[0], writable: !line.Has("-r")));
        var failed = false;
        foreach (var command in commands)
        {
            failed |= !Execute(image, command, line.Has("-q"));
        }

        return failed ? 1 : 0;
    }

    private static bool Execute(Qcow2Image image, IoRequest command, bool quiet)
    {
        if (command.Verb == "flush")
        {
            image.Flush();
            return true;
        }

        if (command.Offset > image.Size || command.Length > image.Size - command.Offset)
        {
            Console.Error.WriteLine($"{command.Verb} failed: Input/output error (request [{command.Offset}, {command.Offset + command.Length}) ends past the {image.Size}-byte disk)");
            return false;
        }

        var timer = Stopwatch.StartNew();
        var ok = true;
        switch (command.Verb)
        {
            case "write" when command.Zero:
                image.WriteZeroes(command.Offset, command.Length, command.Unmap);
                break;
            case "write":
                var data = new byte[command.Length];
                Array.Fill(data, command.Pattern ?? DefaultWritePattern);
                if (command.Compressed)
                {
                    for (var done = 0L; done < data.Length; done += image.ClusterSize)
                    {
                        image.WriteCompressed(command.Offset + done, data.AsSpan((int)done, (int)Math.Min(image.ClusterSize, data.Length - done)));
                    }
                }
                else
                {
                    image.Write(command.Offset, data);
                }

                break;
            case "read":
                var buffer = new byte[command.Length];
                image.Read(command.Offset, buffer);
                if (command.Pattern is byte pattern)
                {
                    var index = buffer.AsSpan().IndexOfAnyExcept(pattern);
                    if (index >= 0)
                    {
                        Console.Out.WriteLine($"Pattern verification failed at offset {command.Offset + index}, {command.Length} bytes");
                        ok = false;
                    }
                }

                break;
            case "discard":
                image.Discard(command.Offset, command.Length);
                break;
        }

        timer.Stop();
        if (!quiet)
        {
            var verb = command.Verb switch { "write" => "wrote", "read" => "read", _ => "discard" };
            var seconds = Math.Max(timer.Elapsed.TotalSeconds, 1e-9);
            Console.Out.WriteLine($"{verb} {command.Length}/{command.Length} bytes at offset {command.Offset}");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{Sizes.Format(command.Length)}, 1 ops; {timer.Elapsed:ss\\.ff} sec ({command.Length / 1048576.0 / seconds:0.000} MiB/sec and {1 / seconds:0.0000} ops/sec)"));
        }

        return ok;
    }

    private static IoRequest ParseCommand(string text)
    {
        var words = text.Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (words.Length == 0)
        {
            throw new UsageException("empty -c command");
        }

        var verb = words[0];
        if (verb == "flush")
        {
            return new IoRequest("flush", 0, 0, null, false, false, false);
        }

        if (verb is not ("write" or "read" or "discard"))
        {
            throw new UsageException($"unknown io command '{verb}' (use write, read, discard or flush)");
        }

        byte? pattern = null;
        bool zero = false, unmap = false, compressed = false;
        var positionals = new List<string>();
        for (var i = 1; i < words.Length; i++)
        {
            switch (words[i])
            {
                case "-P" when i + 1 < words.Length:
                    pattern = ParsePattern(words[++i]);
                    break;
                case "-z" when verb == "write":
                    zero = true;
                    break;
                case "-u" when verb == "write":
                    unmap = true;
                    break;
                case "-c" when verb == "write":
                    compressed = true;
                    break;
                case var word when word.StartsWith('-') && word.Length > 1 && !char.IsAsciiDigit(word[1]):
                    throw new UsageException($"{verb}: unknown option '{word}'");
                default:
                    positionals.Add(words[i]);
                    break;
            }
        }

        if (positionals.Count != 2)
        {
            throw new UsageException($"{verb} needs an offset and a length");
        }

        if (unmap && !zero)
        {
            throw new UsageException("write -u needs -z");
        }

        var offset = ParseNumber(positionals[0]);
        var length = ParseNumber(positionals[1]);
        if (length > MaxRequestBytes && !zero && verb != "discard")
        {
            throw new UsageException($"length cannot exceed {MaxRequestBytes}, given {positionals[1]}");
        }

        return new IoRequest(verb, offset, length, pattern, zero, unmap, compressed);
    }

    /// <summary>An offset or a length: qemu-io's cvtnum, which takes qemu's size syntax, and its words.</summary>
    private static long ParseNumber(string text) => Sizes.TryParse(text, out var value) switch
    {
        SizeSyntax.Valid => value,
        SizeSyntax.TooLarge => throw new UsageException($"Parsing error: argument too large -- {text}"),
        _ => throw new UsageException($"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {text}"),
    };

    /// <summary>A -P byte: decimal or 0x hexadecimal, 0 to 255, with qemu-io's words for anything else.</summary>
    private static byte ParsePattern(string text)
    {
        var value = text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? int.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var hex) ? hex : -1
            : int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var number) ? number : -1;
        return value is >= 0 and <= byte.MaxValue ? (byte)value : throw new UsageException($"{text} is not a valid pattern byte");
    }

    private sealed record IoRequest(string Verb, long Offset, long Length, byte? Pattern, bool Zero, bool Unmap, bool Compressed);
}
