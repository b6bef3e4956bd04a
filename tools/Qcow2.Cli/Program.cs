using QcowDedup.Cli.Commands;

namespace QcowDedup.Cli;

/// <summary>The qcow2 command line: qemu-img's verbs, flags, output shapes and exit codes.</summary>
internal static class Program
{
    private static readonly Dictionary<string, (Func<IReadOnlyList<string>, int> Run, string Usage)> Verbs = new(StringComparer.Ordinal)
    {
        ["info"] = (InfoCommand.Run, InfoCommand.Usage),
        ["map"] = (MapCommand.Run, MapCommand.Usage),
        ["check"] = (CheckCommand.Run, CheckCommand.Usage),
        ["convert"] = (ConvertCommand.Run, ConvertCommand.Usage),
        ["compare"] = (CompareCommand.Run, CompareCommand.Usage),
        ["create"] = (CreateCommand.Run, CreateCommand.Usage),
        ["resize"] = (ResizeCommand.Run, ResizeCommand.Usage),
        ["measure"] = (MeasureCommand.Run, MeasureCommand.Usage),
        ["io"] = (IoCommand.Run, IoCommand.Usage),
        ["dedup"] = (DedupCommand.Run, DedupCommand.Usage),
        ["snapshot"] = (SnapshotCommand.Run, SnapshotCommand.Usage),
        ["commit"] = (CommitCommand.Run, CommitCommand.Usage),
        ["rebase"] = (RebaseCommand.Run, RebaseCommand.Usage),
        ["amend"] = (AmendCommand.Run, AmendCommand.Usage),
        ["bench"] = (BenchCommand.Run, BenchCommand.Usage),
        ["bitmap"] = (BitmapCommand.Run, BitmapCommand.Usage),
        ["dd"] = (DdCommand.Run, DdCommand.Usage),
    };

    public static int Main(string[] args)
    {
        StandardStreams.WriteWithoutTerminalSetup();
        return Run(args);
    }

    /// <summary>
    /// Runs one command line and returns its exit code. Every failure is reported as one line on
    /// stderr: "qcow2 VERB: …" for a wrong command line, "qcow2: …" for what went wrong with the
    /// images, and "qcow2: internal error …" for a bug; never a stack trace.
    /// </summary>
    internal static int Run(IReadOnlyList<string> args)
    {
        var verb = args.Count > 0 ? args[0] : string.Empty;

        // compare reports failures with images with 2 (1 means "different"), like qemu-img compare.
        var errorCode = verb == "compare" ? 2 : 1;
        ImageOpts.Reset();
        try
        {
            return Dispatch(args);
        }
        catch (QemuArgumentError error)
        {
            return Fail($"qcow2: {ImageOpts.ShowAsGiven(error.Message)}", error.ExitCode);
        }
        catch (UsageException error)
        {
            // A wrong command line is exit 1 for every verb, compare included, as in qemu-img.
            return Fail(ErrorReport.Line(verb, error), 1);
        }
        catch (Exception error)
        {
            return Fail(ErrorReport.Line(verb, error), errorCode);
        }
    }

    private static int Dispatch(IReadOnlyList<string> args)
    {
        if (args is ["help", var asked, ..])
        {
            return PrintVerbHelp(asked);
        }

        if (args.Count == 0 || args[0] is "-h" or "--help" or "help")
        {
            PrintHelp();
            return args.Count == 0 ? 1 : 0;
        }

        var verb = args[0];
        if (verb is "-V" or "--version")
        {
            Console.Out.WriteLine($"qcow2 (QcowDedup) version {typeof(Program).Assembly.GetName().Version}");
            return 0;
        }

        if (!Verbs.TryGetValue(verb, out var command))
        {
            Console.Error.WriteLine($"qcow2: unknown command '{verb}'; run 'qcow2 --help' for the list");
            return 1;
        }

        var rest = args.Skip(1).ToList();
        return VerbHelp.Asked(rest) ? PrintVerbHelp(verb) : command.Run(rest);
    }

    private static int PrintVerbHelp(string verb)
    {
        if (!Verbs.TryGetValue(verb, out var command) || VerbHelp.For(verb, command.Usage) is not { } help)
        {
            Console.Error.WriteLine($"qcow2: unknown command '{verb}'; run 'qcow2 --help' for the list");
            return 1;
        }

        Console.Out.Write(help);
        return 0;
    }

    private static int Fail(string line, int exitCode)
    {
        try
        {
            Console.Error.WriteLine(line);
        }
        catch (IOException)
        {
            // stderr is gone (a closed pipe): the exit code still tells.
        }

        return exitCode;
    }

    private static void PrintHelp()
    {
        Console.Out.WriteLine("qcow2 - read, write and deduplicate qcow2 images (qemu-img compatible syntax)");
        Console.Out.WriteLine();
        Console.Out.WriteLine("Commands:");
        foreach (var (_, (_, usage)) in Verbs)
        {
            Console.Out.WriteLine($"  {usage}");
        }

        Console.Out.WriteLine();
        Console.Out.WriteLine("'qcow2 help VERB' or 'qcow2 VERB --help' explains a command and each of its options.");
    }
}
