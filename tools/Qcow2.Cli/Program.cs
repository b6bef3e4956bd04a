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
    };

    public static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            PrintHelp();
            return args.Length == 0 ? 1 : 0;
        }

        if (args[0] is "-V" or "--version")
        {
            Console.Out.WriteLine($"qcow2 (QcowDedup) version {typeof(Program).Assembly.GetName().Version}");
            return 0;
        }

        var verb = args[0];
        if (!Verbs.TryGetValue(verb, out var command))
        {
            Console.Error.WriteLine($"qcow2: unknown command '{verb}'; run 'qcow2 --help' for the list");
            return 1;
        }

        // compare reports errors with 2 (1 means "different"), like qemu-img compare.
        var errorCode = verb == "compare" ? 2 : 1;
        try
        {
            return command.Run(args.Skip(1).ToList());
        }
        catch (UsageException error)
        {
            Console.Error.WriteLine($"qcow2 {verb}: {error.Message}");
            Console.Error.WriteLine($"usage: {command.Usage}");
            return errorCode;
        }
        catch (Exception error) when (error is IOException or InvalidDataException or NotSupportedException or UnauthorizedAccessException or ArgumentException or KeyNotFoundException or InvalidOperationException)
        {
            Console.Error.WriteLine($"qcow2: {Describe(error)}");
            return errorCode;
        }
    }

    private static string Describe(Exception error) => error switch
    {
        FileNotFoundException missing when missing.FileName is not null && !missing.Message.Contains(missing.FileName, StringComparison.Ordinal) => $"Could not open '{missing.FileName}': {missing.Message}",
        _ => error.Message,
    };

    private static void PrintHelp()
    {
        Console.Out.WriteLine("qcow2 - read, write and deduplicate qcow2 images (qemu-img compatible syntax)");
        Console.Out.WriteLine();
        Console.Out.WriteLine("Commands:");
        foreach (var (_, (_, usage)) in Verbs)
        {
            Console.Out.WriteLine($"  {usage}");
        }
    }
}
