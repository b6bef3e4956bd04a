using System.Text;

namespace QcowDedup.Cli;

/// <summary>
/// Console.Out and Console.Error that write the bytes and nothing else. On Unix, .NET's own
/// console streams set up the terminal on their first write — they send terminfo's keypad_xmit
/// (ESC [ ? 1 h ESC =) and never send keypad_local back — so every run of qcow2 from a
/// terminal would leave it in keypad-transmit mode. Writers over the raw descriptors never
/// reach that code; Console.IsOutputRedirected asks the descriptor itself and still works.
/// </summary>
internal static class StandardStreams
{
    private const int StandardOutput = 1;
    private const int StandardError = 2;

    /// <summary>Replaces Console.Out and Console.Error; call first in Main, before anything writes.</summary>
    public static void WriteWithoutTerminalSetup()
    {
        if (OperatingSystem.IsWindows())
        {
            return; // the Windows console has no terminfo set-up to avoid
        }

        var utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false);
        Console.SetOut(new StreamWriter(new DescriptorStream(StandardOutput), utf8) { AutoFlush = true });
        Console.SetError(new StreamWriter(new DescriptorStream(StandardError), utf8) { AutoFlush = true });
    }
}
