using System.Globalization;
using System.Text;
using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// qcow2 check [-f qcow2] [-r leaks|all] [--output human|json] [-q] FILE — qemu-img check: the same
/// counts, text, JSON keys and exit codes (0 clean, 1 check errors, 2 corruptions, 3 leaks only,
/// 63 for formats without checks). Per-cluster diagnostics go to stderr, the summary to stdout.
/// </summary>
internal static class CheckCommand
{
    public const string Usage = "qcow2 check [-f qcow2] [-r leaks|all] [--output human|json] [-q] [-p] FILE";

    /// <summary>Exit code of qemu-img check for a format it cannot check.</summary>
    private const int NotSupportedExitCode = 63;

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "--format", "-r", "--repair", "--output", "-T"], ["-q", "-p", "-U", "--force-share"], ImageArguments.First);
        ImageOptions.CheckCacheModes(line);
        var repair = line.Value("-r", "--repair") switch
        {
            null => CheckRepair.None,
            "leaks" => CheckRepair.Leaks,
            "all" => CheckRepair.All,
            var other => throw QemuArgumentError.WithHelpHint($"Unknown option value for -r (expecting 'leaks' or 'all'): {other}"),
        };
        if (line.Positionals.Count != 1)
        {
            throw new UsageException("Expecting one image file name");
        }

        var json = OutputMode.IsJson(line.Value("--output"));
        var path = line.Positionals[0];
        var quiet = line.Has("-q");
        FileArguments.CheckInput(path);

        var format = line.Value("-f", "--format") ?? DiskSource.ProbeFormat(path);
        if (format is not ("qcow2" or "raw"))
        {
            throw new UsageException($"unknown or unsupported format '{format}' (use qcow2 or raw)");
        }

        if (format == "raw")
        {
            Console.Error.WriteLine("qcow2: This image format does not support checks");
            return NotSupportedExitCode;
        }

        var progress = new Progress(line.Has("-p") && !quiet);
        using var image = Qcow2Image.Open(path, ImageOptions.For(line, path, writable: repair != CheckRepair.None) with { ForRepair = true });
        var result = image.Check(repair);
        WriteDiagnostics(result);
        if (result.Failure is null && (result.CorruptionsFixed > 0 || result.LeaksFixed > 0))
        {
            if (!json)
            {
                Say(quiet, string.Create(CultureInfo.InvariantCulture,
                    $"The following inconsistencies were found and repaired:\n\n    {result.LeaksFixed} leaked clusters\n    {result.CorruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n"));
            }

            var recheck = image.Check();
            WriteDiagnostics(recheck);
            result = recheck with { CorruptionsFixed = result.CorruptionsFixed, LeaksFixed = result.LeaksFixed, Losses = result.Losses };
        }

        progress.Finish();
        if (result.Failure is { } failure)
        {
            // Like qemu-img: a check that stopped early prints no summary.
            Console.Error.WriteLine($"qcow2: Check failed: {failure}");
            return result.ExitCode;
        }

        Say(quiet, json ? Json(result, path) + "\n" : Human(result) + HumanLosses(result));
        if (result.CheckErrors > 0)
        {
            Console.Error.WriteLine("qcow2: Check failed");
        }

        return result.ExitCode;
    }

    /// <summary>qemu-img's human summary (dump_human_image_check).</summary>
    internal static string Human(CheckResult result)
    {
        var text = new StringBuilder();
        if (result.IsClean)
        {
            text.Append("No errors were found on the image.\n");
        }
        else
        {
            if (result.Corruptions > 0)
            {
                text.Append(CultureInfo.InvariantCulture, $"\n{result.Corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n");
            }

            if (result.Leaks > 0)
            {
                text.Append(CultureInfo.InvariantCulture, $"\n{result.Leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n");
            }

            if (result.CheckErrors > 0)
            {
                text.Append(CultureInfo.InvariantCulture, $"\n{result.CheckErrors} internal errors have occurred during the check.\n");
            }
        }

        if (result.TotalClusters != 0 && result.AllocatedClusters != 0)
        {
            text.Append(CultureInfo.InvariantCulture,
                $"{result.AllocatedClusters}/{result.TotalClusters} = {result.AllocatedClusters * 100.0 / result.TotalClusters:0.00}% allocated, {result.FragmentedClusters * 100.0 / result.AllocatedClusters:0.00}% fragmented, {result.CompressedClusters * 100.0 / result.AllocatedClusters:0.00}% compressed clusters\n");
        }

        if (result.ImageEndOffset != 0)
        {
            text.Append(CultureInfo.InvariantCulture, $"Image end offset: {result.ImageEndOffset}\n");
        }

        return text.ToString();
    }

    /// <summary>
    /// What a repair past qemu-img's dropped (qemu-img has no such lines: its repair stops
    /// earlier and leaves the image corrupt instead).
    /// </summary>
    internal static string HumanLosses(CheckResult result)
    {
        if (result.Losses.Count == 0)
        {
            return string.Empty;
        }

        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"\nThe repair dropped {result.Losses.Count} guest ranges it could not read; their data is lost:\n");
        foreach (var loss in result.Losses)
        {
            var disk = loss.SnapshotId is null ? string.Empty : $"snapshot {loss.SnapshotId}, ";
            text.Append(CultureInfo.InvariantCulture, $"    {disk}guest offset 0x{loss.GuestOffset:x}, {loss.Length} bytes: {loss.Reason}\n");
        }

        return text.ToString();
    }

    /// <summary>
    /// qemu-img's JSON (QAPI ImageCheck): check-errors, filename and format always; the other
    /// counters only when non-zero. Keys come in the order qemu-img prints them (its dictionary's
    /// hash order), so the two outputs can be compared as text.
    /// </summary>
    internal static string Json(CheckResult result, string path) => Cli.Json.Write(w =>
    {
        void Optional(string key, long value)
        {
            if (value != 0)
            {
                w.WriteNumber(key, value);
            }
        }

        w.WriteStartObject();
        Optional("image-end-offset", result.ImageEndOffset);
        Optional("compressed-clusters", result.CompressedClusters);
        Optional("total-clusters", result.TotalClusters);
        Optional("corruptions", result.Corruptions);
        Optional("corruptions-fixed", result.CorruptionsFixed);
        w.WriteNumber("check-errors", result.CheckErrors);
        Optional("leaks", result.Leaks);
        Optional("leaks-fixed", result.LeaksFixed);
        Optional("allocated-clusters", result.AllocatedClusters);
        w.WriteString("filename", ImageOpts.AsGiven(path)); // qemu-img check names the image as given, option string and all
        w.WriteString("format", "qcow2");
        Optional("fragmented-clusters", result.FragmentedClusters);
        if (result.Losses.Count > 0)
        {
            // Ours alone (a repair past qemu-img's): absent whenever the report can match qemu-img's.
            w.WriteStartArray("lost-data");
            foreach (var loss in result.Losses)
            {
                w.WriteStartObject();
                if (loss.SnapshotId is not null)
                {
                    w.WriteString("snapshot", loss.SnapshotId);
                }

                w.WriteNumber("offset", loss.GuestOffset);
                w.WriteNumber("length", loss.Length);
                w.WriteString("reason", loss.Reason);
                w.WriteEndObject();
            }

            w.WriteEndArray();
        }

        w.WriteEndObject();
    });

    private static void WriteDiagnostics(CheckResult result)
    {
        foreach (var message in result.Messages)
        {
            Console.Error.WriteLine(message);
        }
    }

    private static void Say(bool quiet, string text)
    {
        if (!quiet)
        {
            Console.Out.Write(text);
        }
    }
}
