using System.Diagnostics;
using System.Globalization;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 bench: qemu-img bench's request loop through the library — COUNT requests of SIZE
/// bytes, DEPTH in flight, each STEP bytes after the previous one and wrapping at the end of the
/// disk as qemu-img wraps — with its two lines of output.
/// </summary>
internal static class BenchCommand
{
    public const string Usage = "qcow2 bench [-c COUNT] [-d DEPTH] [-f qcow2] [-o OFFSET] [-q] [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-w [--pattern=PATTERN]] [-U] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-c", "-d", "-f", "-o", "-s", "-S", "-t", "--pattern"], ["-q", "-w", "-n", .. ImageOptions.ForceShareFlags], ImageArguments.First);
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"bench runs on qcow2 images; '{format}' is not supported");
        }

        var count = Positive(line, "-c", 75000, "request count");
        var depth = Positive(line, "-d", 64, "queue depth");
        var size = (int)Math.Min(int.MaxValue, Sizes.ParseParameter("buffer size", line.Value("-s") ?? "4096"));
        var step = line.Value("-S") is { } stepText ? Sizes.ParseParameter("step size", stepText) : size;
        var offset = line.Value("-o") is { } offsetText ? Sizes.ParseParameter("offset", offsetText) : 0;
        var write = line.Has("-w");
        if (size <= 0 || step < 0 || step > int.MaxValue || offset < 0)
        {
            throw new UsageException("buffer size must be positive, step size and offset not negative");
        }

        if (line.Value("--pattern") is { } patternText && (!write || !byte.TryParse(patternText, NumberStyles.Integer, CultureInfo.InvariantCulture, out _)))
        {
            throw new UsageException("--pattern takes a byte value (0-255) and needs -w");
        }

        var pattern = byte.Parse(line.Value("--pattern") ?? "0", CultureInfo.InvariantCulture);
        using var image = FileArguments.OpenImage(line.Positionals[0], ImageOptions.For(line, line.Positionals[0], writable: write));
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Sending {count} {(write ? "write" : "read")} requests, {size} bytes each, {depth} in parallel (starting at offset {offset}, step size {step})"));
        }

        var watch = Stopwatch.StartNew();
        RunRequests(image, new Plan(count, depth, size, step, offset, write, pattern));
        watch.Stop();
        if (!line.Has("-q"))
        {
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Run completed in {watch.Elapsed.TotalSeconds:0.000} seconds."));
        }

        return 0;
    }

    private readonly record struct Plan(int Count, int Depth, int Size, long Step, long Offset, bool Write, byte Pattern);

    /// <summary>Issues the requests, <see cref="Plan.Depth"/> at a time, then flushes like qemu-img's close.</summary>
    private static void RunRequests(Qcow2Image image, Plan plan)
    {
        var offset = plan.Offset;
        var buffers = Enumerable.Range(0, plan.Depth).Select(_ => new byte[plan.Size]).ToArray();
        foreach (var buffer in buffers)
        {
            buffer.AsSpan().Fill(plan.Pattern);
        }

        var inFlight = new Task[Math.Min(plan.Depth, plan.Count)];
        for (var i = 0; i < plan.Count; i++)
        {
            if (offset + plan.Size > image.Size)
            {
                // qemu-img 7.2 wraps modulo the disk size, so a request may reach past its end: the run fails.
                Task.WaitAll([.. inFlight.Where(t => t is not null)]);
                throw new IOException("Failed request: Input/output error");
            }

            var slot = i % inFlight.Length;
            inFlight[slot]?.GetAwaiter().GetResult();
            inFlight[slot] = plan.Depth == 1 ? Request(image, plan, offset, buffers[slot], sync: true) : Request(image, plan, offset, buffers[slot], sync: false);
            offset = Next(offset, plan.Step, image.Size);
        }

        Task.WaitAll([.. inFlight.Where(t => t is not null)]);
        if (plan.Write)
        {
            image.Flush();
        }
    }

    private static Task Request(Qcow2Image image, Plan plan, long offset, byte[] buffer, bool sync)
    {
        if (sync)
        {
            if (plan.Write)
            {
                image.Write(offset, buffer);
            }
            else
            {
                image.Read(offset, buffer);
            }

            return Task.CompletedTask;
        }

        return plan.Write ? image.WriteAsync(offset, buffer).AsTask() : image.ReadAsync(offset, buffer).AsTask();
    }

    /// <summary>qemu-img 7.2 bench's next offset: one step on, modulo the disk size.</summary>
    private static long Next(long offset, long step, long diskSize) => diskSize == 0 ? 0 : (offset + step) % diskSize;

    private static int Positive(CommandLine line, string name, int fallback, string what)
    {
        if (line.Value(name) is not { } text)
        {
            return fallback;
        }

        return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value > 0
            ? value
            : throw new UsageException($"Invalid {what} specified: '{text}'");
    }
}
