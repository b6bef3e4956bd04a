using QcowDedup.Cli;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>`qcow2 help VERB` and `qcow2 VERB --help`/`-h` (issue 13, acceptance 4).</summary>
[TestFixture]
public class VerbHelpTests : TempDirectoryFixture
{
    private static readonly string[] AllVerbs =
        ["info", "map", "check", "convert", "compare", "create", "resize", "measure", "io", "dedup", "snapshot", "commit", "rebase", "amend", "bench", "bitmap", "dd"];

    [TestCaseSource(nameof(AllVerbs))]
    public void Every_verb_explains_itself_three_ways_alike(string verb)
    {
        var help = CliRunner.Run("help", verb);
        help.ExitCode.ShouldBe(0, help.Error);
        help.Error.ShouldBeEmpty();
        help.Output.ShouldStartWith($"usage: qcow2 {verb} ");
        help.Output.ShouldContain("\nOptions:\n");
        CliRunner.Run(verb, "--help").ShouldBe(help);
        CliRunner.Run(verb, "-h").ShouldBe(help);
    }

    [Test]
    public void Every_option_in_a_usage_line_is_explained()
    {
        foreach (var verb in AllVerbs)
        {
            var text = CliRunner.Run("help", verb).Output;
            var usage = text[..text.IndexOf('\n', StringComparison.Ordinal)];
            usage = string.Concat(usage.Split('\'').Where((_, i) => i % 2 == 0)); // io's quoted sub-commands are not options
            var options = text[text.IndexOf("Options:", StringComparison.Ordinal)..];
            foreach (var flag in usage.Split(' ', '[', ']', '(', ')', '|').Where(w => w.StartsWith('-') && w.Length > 1))
            {
                var name = flag.Split('=')[0];
                options.ShouldContain($"  {name}", Case.Sensitive, $"qcow2 {verb}: {name} has no line under Options");
            }
        }
    }

    [Test]
    public void Help_names_the_list_and_refuses_an_unknown_verb()
    {
        CliRunner.Run("--help").Output.ShouldContain("'qcow2 help VERB' or 'qcow2 VERB --help'");
        var unknown = CliRunner.Run("help", "frobnicate");
        unknown.ExitCode.ShouldBe(1);
        unknown.Error.ShouldBe("qcow2: unknown command 'frobnicate'; run 'qcow2 --help' for the list\n");
        VerbHelp.Names.Order().ShouldBe(AllVerbs.Order());
    }

    [Test]
    public void Asking_for_help_does_not_run_the_verb()
    {
        var image = PathOf("x.qcow2");
        CliRunner.Run("create", image, "1M", "--help").ExitCode.ShouldBe(0);
        File.Exists(image).ShouldBeFalse();
    }
}
