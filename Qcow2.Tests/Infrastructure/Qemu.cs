using System.Diagnostics;
using System.Text.Json;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>
/// Runs the oracle: qemu-img and qemu-io from the Debian package qemu-utils. A missing tool is a
/// test failure with instructions, never a skip.
/// </summary>
public static class Qemu
{
    private static readonly Lazy<string> ImgPath = new(() => Find("qemu-img"));
    private static readonly Lazy<string> IoPath = new(() => Find("qemu-io"));

    /// <summary>Runs qemu-img; throws with its stderr when it fails.</summary>
    public static string Img(params string[] args) => Checked(ImgPath.Value, args);

    /// <summary>Runs qemu-img and returns its exit code and output without judging them.</summary>
    public static ProcessResult ImgResult(params string[] args) => Run(ImgPath.Value, args);

    /// <summary>Runs qemu-io commands on a qcow2 image.</summary>
    public static string Io(string image, params string[] commands) => IoFormat("qcow2", image, commands);

    /// <summary>Runs qemu-io commands on an image of the given format.</summary>
    public static string IoFormat(string format, string image, params string[] commands)
    {
        var args = new List<string> { "-f", format };
        foreach (var command in commands)
        {
            args.Add("-c");
            args.Add(command);
        }

        args.Add(image);
        var result = Run(IoPath.Value, args);
        // qemu-io reports failed commands on stdout/stderr but may still exit 0; treat any "failed" as an error.
        if (result.ExitCode != 0 || result.Output.Contains("failed", StringComparison.Ordinal) || result.Error.Contains("failed", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"qemu-io {string.Join(' ', args)} failed ({result.ExitCode}):\n{result.Output}\n{result.Error}");
        }

        return result.Output;
    }

    /// <summary>Runs qemu-io commands and returns the outcome without judging it (for "abort").</summary>
    public static ProcessResult IoUnchecked(string image, params string[] commands) =>
        Run(IoPath.Value, [.. commands.SelectMany(c => new[] { "-c", c }), image]);

    /// <summary>qemu-img check --output=json, parsed.</summary>
    public static CheckReport Check(string image, params string[] extraArgs)
    {
        var result = Run(ImgPath.Value, ["check", "--output=json", .. extraArgs, image]);
        using var json = JsonDocument.Parse(result.Output.Length > 0 ? result.Output : "{}");
        var root = json.RootElement;
        int Get(string key) => root.TryGetProperty(key, out var value) ? value.GetInt32() : 0;
        return new CheckReport(result.ExitCode, Get("corruptions"), Get("leaks"), Get("check-errors"), result.Output + result.Error);
    }

    /// <summary>Asserts that qemu-img check finds no corruption, no leak and no check error.</summary>
    public static void AssertClean(string image)
    {
        var report = Check(image);
        report.ShouldSatisfyAllConditions(
            () => report.Corruptions.ShouldBe(0, report.Text),
            () => report.Leaks.ShouldBe(0, report.Text),
            () => report.CheckErrors.ShouldBe(0, report.Text),
            () => report.ExitCode.ShouldBe(0, report.Text));
    }

    /// <summary>Whether qemu-img compare reports the two images identical.</summary>
    public static ProcessResult Compare(string first, string second, string firstFormat = "qcow2", string secondFormat = "raw") =>
        Run(ImgPath.Value, ["compare", "-f", firstFormat, "-F", secondFormat, first, second]);

    /// <summary>
    /// Directory qemu tools run in. QEMU opens relative external data file names against its
    /// current directory, so builders set this to the image directory.
    /// </summary>
    public static AsyncLocal<string?> WorkingDirectory { get; } = new();

    /// <summary>The bitmap lines of qemu-img info (names, flags, granularities), empty when there are none.</summary>
    public static string[] InfoBitmapLines(string path) =>
        [.. Img("info", path).Split('\n').SkipWhile(l => !l.Contains("bitmaps:", StringComparison.Ordinal)).TakeWhile(l => !l.Contains("refcount bits", StringComparison.Ordinal))];

    /// <summary>
    /// The guest ranges QEMU itself reads as dirty in a persistent bitmap: qemu-nbd exports the
    /// image read-only with the bitmap, and qemu-img map reads the qemu:dirty-bitmap context
    /// (dirty ranges come back as "present": false). qemu-nbd refuses an inconsistent bitmap, so
    /// this also proves QEMU loads it. Throws with QEMU's message when either tool fails.
    /// </summary>
    public static IReadOnlyList<(long Offset, long Length)> DirtyRanges(string image, string bitmap)
    {
        var socket = Path.Combine(Path.GetTempPath(), $"qcowdedup-nbd-{Guid.NewGuid():N}.sock");
        var start = new ProcessStartInfo(Find("qemu-nbd")) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "-t", "-k", socket, "-f", "qcow2", "-r", "-B", bitmap, image })
        {
            start.ArgumentList.Add(arg);
        }

        using var server = Process.Start(start) ?? throw new InvalidOperationException("Could not start qemu-nbd.");
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (!File.Exists(socket))
            {
                if (server.HasExited)
                {
                    throw new InvalidOperationException($"qemu-nbd refused bitmap '{bitmap}' of {image}: {server.StandardError.ReadToEnd()}");
                }

                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException("qemu-nbd did not open its socket within 20 s.");
                }

                Thread.Sleep(20);
            }

            // qemu-nbd binds its socket before it opens the image: a refused bitmap shows as a refused connection.
            var map = ImgResult("map", "--output=json", "--image-opts", $"driver=nbd,server.type=unix,server.path={socket},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}");
            if (map.ExitCode != 0)
            {
                throw new InvalidOperationException(server.WaitForExit(5000)
                    ? $"qemu-nbd refused bitmap '{bitmap}' of {image}: {server.StandardError.ReadToEnd()}"
                    : $"qemu-img map of bitmap '{bitmap}' failed: {map.Error}");
            }

            using var json = JsonDocument.Parse(map.Output);
            return [.. json.RootElement.EnumerateArray()
                .Where(e => !e.GetProperty("present").GetBoolean())
                .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64()))];
        }
        finally
        {
            if (!server.HasExited)
            {
                server.Kill();
            }

            server.WaitForExit();
            File.Delete(socket);
        }
    }

    /// <summary>
    /// Runs another Debian tool the tests use to build fixtures outside our code (mkfs.fat, mcopy,
    /// mkntfs, ntfscp); throws with its output when it fails. A missing tool fails the test too.
    /// </summary>
    public static string Tool(string tool, params string[] args) => Checked(Find(tool), args);

    public static ProcessResult Run(string tool, IReadOnlyList<string> args)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (WorkingDirectory.Value is { } directory)
        {
            start.WorkingDirectory = directory;
        }

        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start {tool}.");
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return new ProcessResult(process.ExitCode, output, error.Result);
    }

    private static string Checked(string tool, IReadOnlyList<string> args)
    {
        var result = Run(tool, args);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{Path.GetFileName(tool)} {string.Join(' ', args)} failed ({result.ExitCode}):\n{result.Output}\n{result.Error}");
        }

        return result.Output;
    }

    private static string Find(string tool)
    {
        // mkfs.* and mkntfs live in sbin, which a non-root PATH may lack.
        foreach (var directory in $"{Environment.GetEnvironmentVariable("PATH")}{Path.PathSeparator}/usr/sbin{Path.PathSeparator}/sbin".Split(Path.PathSeparator))
        {
            var candidate = Path.Combine(directory, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        var package = tool switch
        {
            "mkfs.fat" => "dosfstools",
            "mcopy" or "mmd" => "mtools",
            "mkntfs" or "ntfscp" => "ntfs-3g",
            _ => "qemu-utils",
        };
        throw new InvalidOperationException($"{tool} is not installed. The tests use it to build images outside our code: install the Debian package {package} (tools/test.sh does this).");
    }
}

public sealed record ProcessResult(int ExitCode, string Output, string Error);

public sealed record CheckReport(int ExitCode, int Corruptions, int Leaks, int CheckErrors, string Text);
