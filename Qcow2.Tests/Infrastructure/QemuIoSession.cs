using System.Diagnostics;
using System.Text;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>
/// A qemu-io process that keeps an image open — as a running VM would — until disposed.
/// Commands go to its prompt one at a time; <see cref="Dispose"/> quits it.
/// </summary>
public sealed class QemuIoSession : IDisposable
{
    private const string Prompt = "qemu-io> ";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly Lock _gate = new();
    private int _consumed;

    private QemuIoSession(Process process)
    {
        _process = process;
        _ = Task.Run(ReadOutputAsync);
    }

    /// <summary>Everything qemu-io wrote to stderr so far.</summary>
    public string Errors { get; private set; } = string.Empty;

    /// <summary>Starts qemu-io on <paramref name="image"/> and waits until it holds it open.</summary>
    /// <param name="image">The image.</param>
    /// <param name="options">Extra qemu-io options, e.g. "-r" (read-only) or "-U" (force share).</param>
    public static QemuIoSession Open(string image, params string[] options)
    {
        var start = new ProcessStartInfo("qemu-io")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var option in (string[])[.. options, "-f", "qcow2", image])
        {
            start.ArgumentList.Add(option);
        }

        var session = new QemuIoSession(Process.Start(start) ?? throw new InvalidOperationException("Could not start qemu-io."));
        session.WaitForPrompt();
        return session;
    }

    /// <summary>Runs one qemu-io command and returns what it printed.</summary>
    public string Run(string command)
    {
        _process.StandardInput.WriteLine(command);
        _process.StandardInput.Flush();
        return WaitForPrompt();
    }

    /// <summary>Quits qemu-io, which closes the image and drops its locks.</summary>
    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.StandardInput.WriteLine("quit");
            _process.StandardInput.Close();
            if (!_process.WaitForExit(Timeout))
            {
                _process.Kill();
            }
        }

        _process.Dispose();
    }

    private string WaitForPrompt()
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < Timeout)
        {
            lock (_gate)
            {
                var text = _output.ToString();
                var prompt = text.IndexOf(Prompt, _consumed, StringComparison.Ordinal);
                if (prompt >= 0)
                {
                    var reply = text[_consumed..prompt];
                    _consumed = prompt + Prompt.Length;
                    return reply;
                }
            }

            if (_process.HasExited)
            {
                Errors = _process.StandardError.ReadToEnd();
                throw new InvalidOperationException($"qemu-io exited ({_process.ExitCode}): {_output}{Errors}");
            }

            Thread.Sleep(10);
        }

        throw new TimeoutException($"qemu-io gave no prompt within {Timeout}: {_output}");
    }

    private async Task ReadOutputAsync()
    {
        var buffer = new char[4096];
        int read;
        while ((read = await _process.StandardOutput.ReadAsync(buffer).ConfigureAwait(false)) > 0)
        {
            lock (_gate)
            {
                _output.Append(buffer, 0, read);
            }
        }
    }
}
