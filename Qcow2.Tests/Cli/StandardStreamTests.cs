using System.Diagnostics;
using QcowDedup.Cli;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// The built qcow2 run as a process: from a terminal it leaves the terminal as it found it and
/// still shows progress; into a file it writes where the shell expects; with stdout closed it
/// still fails in one line. These are about the real standard streams, which the in-process
/// CliRunner replaces, so each test starts "dotnet qcow2.dll".
/// </summary>
[TestFixture]
public class StandardStreamTests : TempDirectoryFixture
{
    private static readonly TimeSpan Patience = TimeSpan.FromMinutes(1);

    private string _image = string.Empty;

    [SetUp]
    public void CreateImage()
    {
        _image = PathOf("a.qcow2");
        using var image = Qcow2Image.Create(_image, new Qcow2CreateOptions { Size = 1 << 20 });
        image.Write(0, new byte[4096]);
    }

    [Test]
    public void A_run_from_a_terminal_leaves_keypad_transmit_mode_off()
    {
        var output = InTerminal($"{Qcow2Command} info '{_image}'");

        output.ShouldContain("file format: qcow2", customMessage: "the command ran and its output reached the terminal");
        output.ShouldNotContain("\u001b[?1h", customMessage: "keypad_xmit (cursor keys in application mode) would stay on after qcow2 exits");
        output.ShouldNotContain("\u001b=", customMessage: "keypad_xmit (keypad in application mode) would stay on after qcow2 exits");
    }

    [Test]
    public void An_error_in_a_terminal_is_one_line_without_terminal_set_up()
    {
        var output = InTerminal($"{Qcow2Command} info '{PathOf("missing.qcow2")}'");

        output.ShouldNotContain('\u001b');
        output.TrimEnd().ShouldBe($"qcow2: Could not open '{PathOf("missing.qcow2")}': Could not open '{PathOf("missing.qcow2")}': No such file or directory");
    }

    [Test]
    public void Progress_still_shows_on_a_terminal()
    {
        var output = InTerminal($"{Qcow2Command} convert -p -O raw '{_image}' '{PathOf("a.raw")}'");

        output.ShouldContain("(100.00/100%)");
        output.ShouldNotContain('\u001b');
    }

    [Test]
    public void Output_to_a_shared_file_is_followed_not_overwritten_by_the_next_command()
    {
        var log = PathOf("log");

        Run("sh", "-c", $"{{ {Qcow2Command} info '{_image}'; echo after; {Qcow2Command} info '{PathOf("missing.qcow2")}'; echo end; }} > '{log}' 2>&1");

        var lines = File.ReadAllLines(log);
        lines[0].ShouldBe($"image: {_image}");
        lines.ShouldContain("after");
        lines[^2].ShouldStartWith("qcow2: Could not open");
        lines[^1].ShouldBe("end");
    }

    [Test]
    public void A_closed_stdout_is_reported_in_one_line()
    {
        var output = Run("sh", "-c", $"{Qcow2Command} --help 2>&1 >&-; echo \"exit $?\"");

        output.ShouldBe("qcow2: Bad file descriptor\nexit 1\n");
    }

    /// <summary>"dotnet …/qcow2.dll": the tool as built next to this test assembly.</summary>
    private static string Qcow2Command
    {
        get
        {
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
            return $"'{dotnet}' '{typeof(Program).Assembly.Location}'";
        }
    }

    /// <summary>
    /// Runs a shell command with a pseudo-terminal as its stdin, stdout and stderr (util-linux
    /// script) and returns every byte it sent to the terminal.
    /// </summary>
    private static string InTerminal(string command) => Run("script", "-qec", command, "/dev/null");

    private static string Run(string tool, params string[] args)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start {tool}.");
        process.StandardInput.Close();
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEndAsync();
        if (!process.WaitForExit(Patience))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{tool} {string.Join(' ', args)} did not finish within {Patience}.");
        }

        return output.Result + error.Result;
    }
}
