using QcowDedup.Cli;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>Runs the qcow2 command line in-process and captures what it prints.</summary>
public static class CliRunner
{
    private static readonly Lock ConsoleLock = new();

    /// <summary>Runs the command line with <paramref name="directory"/> as the current directory (relative names resolve there, as qemu-img's do).</summary>
    public static ProcessResult RunIn(string directory, params string[] args)
    {
        lock (ConsoleLock)
        {
            var previous = Environment.CurrentDirectory;
            Environment.CurrentDirectory = directory;
            try
            {
                return Run(args);
            }
            finally
            {
                Environment.CurrentDirectory = previous;
            }
        }
    }

    public static ProcessResult Run(params string[] args)
    {
        lock (ConsoleLock)
        {
            var output = new StringWriter();
            var error = new StringWriter();
            var originalOut = Console.Out;
            var originalError = Console.Error;
            Console.SetOut(output);
            Console.SetError(error);
            try
            {
                var code = Program.Run(args);
                return new ProcessResult(code, output.ToString(), error.ToString());
            }
            finally
            {
                Console.SetOut(originalOut);
                Console.SetError(originalError);
            }
        }
    }
}
