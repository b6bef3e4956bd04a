using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// Every verb, given a malformed size, offset, option value, flag or file, fails the way qemu-img
/// does: exit code 1 (2 for compare), one "qcow2…" line on stderr, nothing on stdout, the inputs
/// untouched and no output file left behind. Never a .NET stack trace, and never the
/// "internal error" line Program keeps as a last resort: reaching it means a bug in the case's parser.
/// </summary>
[TestFixture]
[Category("Interop")]
public class ArgumentSweepTests : TempDirectoryFixture
{
    private static readonly string[] AllVerbs =
        ["info", "map", "check", "convert", "compare", "create", "resize", "measure", "io", "dedup", "snapshot", "commit", "rebase", "amend"];

    private static readonly string[] MalformedSizes = ["", "abc", "-1", "1.5.5G", "99999999999999999999", "16E", "0x", "1Q"];

    private static readonly string[] MalformedIoCommands = ["write 0x 1", "read -1 1", "write 0 99999999999999999999", "write", "read 0x10"];

    private static readonly string[] MalformedQcow2Options = ["cluster_size=4G", "cluster_size=3000", "refcount_bits=3", "compat=9"];

    /// <summary>Inputs the cases name with {braces}, built once by qemu-img and copied for every case.</summary>
    private static readonly string[] InputNames = ["a.qcow2", "b.qcow2", "empty", "random", "truncated.qcow2"];

    private string _templates = string.Empty;

    [OneTimeSetUp]
    public void BuildInputs()
    {
        _templates = Path.Combine(Path.GetTempPath(), "qcowdedup-tests", $"{nameof(ArgumentSweepTests)}-{Guid.NewGuid():N}");
        System.IO.Directory.CreateDirectory(_templates);
        Qemu.Img("create", "-q", "-f", "qcow2", Path.Combine(_templates, "a.qcow2"), "1M");
        Qemu.Img("create", "-q", "-f", "qcow2", Path.Combine(_templates, "b.qcow2"), "1M");
        File.WriteAllBytes(Path.Combine(_templates, "empty"), []);
        var random = new byte[4096];
        new Random(8).NextBytes(random);
        File.WriteAllBytes(Path.Combine(_templates, "random"), random);
        File.WriteAllBytes(Path.Combine(_templates, "truncated.qcow2"), File.ReadAllBytes(Path.Combine(_templates, "a.qcow2"))[..40]);
    }

    [OneTimeTearDown]
    public void DeleteInputs() => System.IO.Directory.Delete(_templates, recursive: true);

    [SetUp]
    public void CopyInputs()
    {
        foreach (var name in InputNames)
        {
            File.Copy(Path.Combine(_templates, name), PathOf(name));
        }

        System.IO.Directory.CreateDirectory(PathOf("dir"));
        System.Diagnostics.Process.Start("mkfifo", PathOf("fifo"))!.WaitForExit(); // opening it must not block
    }

    [TestCaseSource(nameof(Cases))]
    public void Malformed_input_fails_with_one_qemu_style_line(string[] template)
    {
        var args = template.Select(Expand).ToArray();
        var before = InputNames.ToDictionary(name => name, name => File.ReadAllBytes(PathOf(name)));

        var result = CliRunner.Run(args);

        var verb = args[0];
        // qemu-img's three-line warning about a format it had to guess may come first, as there.
        var line = string.Join('\n', result.Error.TrimEnd('\n').Split('\n').SkipWhile(l => l.StartsWith("WARNING: Image format was not specified", StringComparison.Ordinal) || l.StartsWith("         ", StringComparison.Ordinal)));
        result.ShouldSatisfyAllConditions(
            () => result.ExitCode.ShouldBe(verb == "compare" && !IsCommandLineError(line) ? 2 : 1), // a wrong command line is 1 even for compare
            () => result.Error.ShouldEndWith("\n"),
            () => line.Split('\n').Length.ShouldBeLessThanOrEqualTo(4, "one line, or qemu-img's own continuation lines (a size's hint takes two, measure adds its 'Invalid options' line)"),
            () => line.ShouldNotContain('\r'),
            () => line.ShouldStartWith("qcow2"),
            () => line.Length.ShouldBeGreaterThan("qcow2: ".Length),
            () => line.ShouldNotContain("   at "),
            () => line.ShouldNotContain("Exception:"),
            () => line.ShouldNotContain("System."),
            () => line.ShouldNotContain("internal error"),
            () => line.ShouldNotContain("(Parameter '"),
            () => (result.Output.Length == 0 || (verb == "create" && result.Output.StartsWith("Formatting '", StringComparison.Ordinal))).ShouldBeTrue($"nothing on stdout but qemu-img's Formatting line: {result.Output}"),
            () => File.Exists(PathOf("new.qcow2")).ShouldBeFalse("a refused command leaves no output file"),
            () => before.ShouldAllBe(input => File.ReadAllBytes(PathOf(input.Key)).SequenceEqual(input.Value), "a refused command changes no input"));
    }

    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var size in MalformedSizes)
        {
            yield return Case("create", "-f", "qcow2", "{new}", size);
            yield return Case("create", "-f", "qcow2", "-o", $"size={size}", "{new}");
            yield return Case("create", "-f", "qcow2", "-o", $"cluster_size={size}", "{new}", "1M");
            yield return Case("convert", "-O", "qcow2", "-o", $"cluster_size={size}", "{a}", "{new}");
            yield return Case("resize", "--shrink", "{a}", size);
            yield return Case("measure", "-O", "qcow2", "--size", size);
            yield return Case("measure", "-O", "qcow2", "-o", $"cluster_size={size}", "--size", "1M");
            yield return Case("amend", "-o", $"size={size}", "{a}");
            yield return Case("dedup", "-o", $"dedup_memory={size}", "{a}");
            yield return Case("io", "-c", $"write 0 {size}".TrimEnd(), "{a}");
        }

        foreach (var command in MalformedIoCommands)
        {
            yield return Case("io", "-c", command, "{a}");
        }

        foreach (var option in MalformedQcow2Options)
        {
            yield return Case("create", "-f", "qcow2", "-o", option, "{new}", "1M");
            yield return Case("convert", "-O", "qcow2", "-o", option, "{a}", "{new}");
            yield return Case("measure", "-O", "qcow2", "-o", option, "--size", "1M");
            yield return Case("amend", "-o", option, "{a}");
            yield return Case("dedup", "-o", option, "{a}");
        }

        foreach (var verb in AllVerbs)
        {
            foreach (var bad in new[] { new[] { "--output=xml" }, ["-f", "vmdk"], ["-o", "frobnicate=on"], ["--frobnicate"], ["-Z"], ["--backing-policy=somewhere"] })
            {
                if (verb != "create" || bad is not ["-f", "vmdk"]) // create makes vmdk disks, as qemu-img does
                {
                    yield return Case([verb, .. bad, .. WellFormedArguments(verb)]);
                }
            }

            foreach (var file in new[] { "{missing}", "{dir}", "{empty}", "{random}", "{truncated.qcow2}", "/dev/null", "{fifo}" })
            {
                // qemu-img resizes any regular file it probes as raw (with a warning), so resize a
                // non-image only where it is no regular file.
                if (verb != "resize" || file is not ("{empty}" or "{random}"))
                {
                    yield return Case(OnFile(verb, file));
                }
            }
        }

        foreach (var output in new[] { "{dir}", "{missing-dir}/new.qcow2" })
        {
            yield return Case("create", "-f", "qcow2", output, "1M");
            yield return Case("convert", "-O", "qcow2", "{a}", output);
        }
    }

    /// <summary>What qemu-img reports for a wrong command line (exit 1 for every verb, compare included).</summary>
    private static bool IsCommandLineError(string line) =>
        line.StartsWith("qcow2 compare:", StringComparison.Ordinal) || line.StartsWith("qcow2: unrecognized option", StringComparison.Ordinal) || line.StartsWith("qcow2: missing argument", StringComparison.Ordinal);

    /// <summary>Arguments that make the verb succeed, so each case differs by its one malformed part.</summary>
    private static string[] WellFormedArguments(string verb) => verb switch
    {
        "convert" => ["-O", "qcow2", "{a}", "{new}"],
        "compare" => ["{a}", "{b}"],
        "create" => ["{new}", "1M"],
        "resize" => ["{a}", "2M"],
        "measure" => ["-O", "qcow2", "{a}"],
        "io" => ["-c", "read 0 512", "{a}"],
        "snapshot" => ["-l", "{a}"],
        "rebase" => ["-u", "-b", "", "{a}"],
        "amend" => ["-o", "compat=1.1", "{a}"],
        _ => ["{a}"],
    };

    /// <summary>The verb reading <paramref name="file"/> as its qcow2 input (-f qcow2, since a raw input would be valid).</summary>
    private static string[] OnFile(string verb, string file) => verb switch
    {
        "convert" => ["convert", "-f", "qcow2", "-O", "qcow2", file, "{new}"],
        "compare" => ["compare", "-f", "qcow2", file, "{b}"],
        "create" => ["create", "-f", "qcow2", "-b", file, "-F", "qcow2", "{new}"],
        "resize" => ["resize", file, "2M"],
        "measure" => ["measure", "-f", "qcow2", "-O", "qcow2", file],
        "io" => ["io", "-c", "read 0 512", file],
        "dedup" => ["dedup", file],
        "snapshot" => ["snapshot", "-f", "qcow2", "-l", file], // probed as raw, qemu-img lists nothing and succeeds
        "commit" => ["commit", file],
        "rebase" => ["rebase", "-u", "-b", "", file],
        "amend" => ["amend", "-o", "compat=1.1", file],
        _ => [verb, "-f", "qcow2", file],
    };

    private static TestCaseData Case(params string[] args) =>
        new TestCaseData((object)args).SetArgDisplayNames(string.Join(' ', args.Select(a => a.Length == 0 || a.Contains(' ', StringComparison.Ordinal) ? $"\"{a}\"" : a)));

    private string Expand(string arg) => arg switch
    {
        "{new}" => PathOf("new.qcow2"),
        "{a}" => PathOf("a.qcow2"),
        "{b}" => PathOf("b.qcow2"),
        "{missing}" => PathOf("missing.qcow2"),
        "{dir}" => PathOf("dir"),
        "{fifo}" => PathOf("fifo"),
        "{empty}" => PathOf("empty"),
        "{random}" => PathOf("random"),
        "{truncated.qcow2}" => PathOf("truncated.qcow2"),
        _ when arg.StartsWith("{missing-dir}", StringComparison.Ordinal) => PathOf("missing-dir") + arg["{missing-dir}".Length..],
        _ => arg,
    };
}
