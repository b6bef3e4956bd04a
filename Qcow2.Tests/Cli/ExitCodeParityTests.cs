using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>Exit codes and output where scripts told qemu-img and us apart (issue 13), judged side by side.</summary>
[TestFixture]
public class ExitCodeParityTests : TempDirectoryFixture
{
    [TestCase("snapshot {qcow2}")]
    [TestCase("snapshot -l {raw}")]
    [TestCase("snapshot -l {empty}")]
    [TestCase("snapshot -c x {raw}")]
    [TestCase("snapshot -l -c x {qcow2}")]
    [TestCase("snapshot {missing}")]
    [TestCase("compare {qcow2}")]
    [TestCase("compare {qcow2} {missing}")]
    [TestCase("compare {qcow2} {raw}")]
    public void Same_exit_code_and_stdout_as_qemu_img(string command)
    {
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("a.qcow2"), "1M");
        Qemu.Img("create", "-q", "-f", "raw", PathOf("r.img"), "1M");
        File.WriteAllBytes(PathOf("empty.img"), []);
        var args = command.Split(' ').Select(a => a switch
        {
            "{qcow2}" => PathOf("a.qcow2"),
            "{raw}" => PathOf("r.img"),
            "{empty}" => PathOf("empty.img"),
            "{missing}" => PathOf("missing.qcow2"),
            _ => a,
        }).ToArray();

        var qemu = Qemu.ImgResult(args);
        var ours = CliRunner.Run(args);
        ours.ExitCode.ShouldBe(qemu.ExitCode, $"qemu-img: {qemu.Error}\nours: {ours.Error}");
        ours.Output.ShouldBe(qemu.Output);
    }

    [TestCase("1000")]
    [TestCase("1k")]
    [TestCase("513")]
    public void A_size_that_is_not_whole_sectors_is_rounded_up_and_reported_as_given(string size)
    {
        foreach (var form in new[] { new[] { "{file}", size }, ["-o", $"size={size}", "{file}"] })
        {
            string[] Args(string file) => ["create", "-f", "qcow2", .. form.Select(a => a == "{file}" ? file : a)];
            var theirs = PathOf("qemu.qcow2");
            var ours = PathOf("ours.qcow2");
            var qemu = Qemu.ImgResult(Args(theirs));
            var result = CliRunner.Run(Args(ours));
            result.ExitCode.ShouldBe(qemu.ExitCode, result.Error);
            result.Output.Replace(ours, theirs, StringComparison.Ordinal).ShouldBe(qemu.Output);
            Qemu.Img("info", ours).Split('\n')[2].ShouldBe(Qemu.Img("info", theirs).Split('\n')[2]); // virtual size
            File.Delete(theirs);
            File.Delete(ours);
        }
    }

    [TestCase("-b {base}", "")]
    [TestCase("-u -b {base}", "1M")]
    [TestCase("-o backing_file={base}", "")]
    [TestCase("-u -b missing.qcow2 -F qcow2", "1M")]
    [TestCase("-u -b missing.qcow2 -F qcow2", "")]
    public void Backing_file_creation_succeeds_and_fails_as_in_qemu_img(string options, string size)
    {
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("base.qcow2"), "1M");
        var flags = options.Replace("{base}", PathOf("base.qcow2"), StringComparison.Ordinal).Split(' ');
        string[] Args(string file) => ["create", "-f", "qcow2", .. flags, file, .. size.Length > 0 ? new[] { size } : []];
        var theirs = PathOf("qemu.qcow2");
        var ours = PathOf("ours.qcow2");
        var qemu = Qemu.ImgResult(Args(theirs));
        var result = CliRunner.Run(Args(ours));
        result.ExitCode.ShouldBe(qemu.ExitCode, $"qemu-img: {qemu.Output}{qemu.Error}\nours: {result.Output}{result.Error}");
        result.Output.Replace(ours, theirs, StringComparison.Ordinal).ShouldBe(qemu.Output);
        File.Exists(ours).ShouldBe(File.Exists(theirs));
    }

    [TestCase("create", "-f", "qcow2", "-o", "help")]
    [TestCase("create", "-f", "qcow2", "-o", "?", "x.qcow2")]
    [TestCase("convert", "-O", "qcow2", "-o", "help", "a", "b")]
    public void Option_help_prints_qemu_img_s_table_and_succeeds(params string[] args)
    {
        var qemu = Qemu.ImgResult(args);
        var ours = CliRunner.Run(args);
        ours.ExitCode.ShouldBe(0, ours.Error);
        qemu.ExitCode.ShouldBe(0);

        // Every line for an option we take is qemu-img's, byte for byte; encryption and the file
        // protocol's extent_size_hint/nocow are not supported, dedup_* are ours (docs/cli-differences.md).
        var ourLines = ours.Output.Split('\n');
        string[] notOurs = ["  encrypt", "  extent_size_hint", "  nocow"];
        foreach (var line in qemu.Output.Split('\n').Where(l => !notOurs.Any(p => l.StartsWith(p, StringComparison.Ordinal))))
        {
            ourLines.ShouldContain(line);
        }

        ourLines.Where(l => l.StartsWith("  ", StringComparison.Ordinal) && !l.StartsWith("  dedup", StringComparison.Ordinal))
            .ShouldAllBe(l => qemu.Output.Contains(l + "\n", StringComparison.Ordinal));
        File.Exists(PathOf("x.qcow2")).ShouldBeFalse();
    }

    [TestCase("--output=json")]
    [TestCase("--output=human")]
    public void Info_of_a_sparse_raw_file_is_qemu_img_s(string output)
    {
        var raw = PathOf("sparse.img");
        using (var file = File.Create(raw))
        {
            file.SetLength(4 << 20);
            file.Position = 1 << 20;
            file.Write(new byte[256 << 10].Select((_, i) => (byte)(i | 1)).ToArray());
        }

        var qemu = Qemu.ImgResult("info", output, raw);
        var ours = CliRunner.Run("info", output, raw);
        ours.ExitCode.ShouldBe(0, ours.Error);
        ours.Output.ShouldBe(qemu.Output); // actual-size / disk size are the allocated blocks; JSON carries dirty-flag
    }

    [TestCase("convert", "-p", "-O", "qcow2", "{a}", "{out}")]
    [TestCase("commit", "-p", "{top}")]
    [TestCase("rebase", "-p", "-b", "", "{top}")]
    public void Progress_goes_to_a_pipe_in_qemu_img_s_form(params string[] template)
    {
        Qemu.Img("create", "-q", "-f", "qcow2", PathOf("a.qcow2"), "8M");
        Qemu.Io(PathOf("a.qcow2"), "write -P 1 0 3M");
        foreach (var side in new[] { "qemu", "ours" })
        {
            Qemu.Img("create", "-q", "-f", "qcow2", "-b", PathOf("a.qcow2"), "-F", "qcow2", PathOf($"{side}-top.qcow2"));
            Qemu.Io(PathOf($"{side}-top.qcow2"), "write -P 2 1M 2M");
        }

        string[] Args(string side) => [.. template.Select(a => a switch
        {
            "{a}" => PathOf("a.qcow2"),
            "{out}" => PathOf($"{side}.qcow2"),
            "{top}" => PathOf($"{side}-top.qcow2"),
            _ => a,
        })];
        var qemu = Qemu.ImgResult(Args("qemu"));
        var ours = CliRunner.Run(Args("ours"));
        foreach (var (who, output) in new[] { ("qemu-img", qemu.Output), ("qcow2", ours.Output) })
        {
            var progress = output.Replace("Image committed.\n", string.Empty, StringComparison.Ordinal);
            System.Text.RegularExpressions.Regex.IsMatch(progress, @"\A(    \(\d{1,3}\.\d\d/100%\)\r)+\n\z").ShouldBeTrue($"{who}: {output}");
            progress.ShouldStartWith("    (0.00/100%)\r", customMessage: who);
            progress.ShouldEndWith("    (100.00/100%)\r\n", customMessage: who);
        }

        ours.ExitCode.ShouldBe(qemu.ExitCode);
        ours.Output.Contains("Image committed.", StringComparison.Ordinal).ShouldBe(qemu.Output.Contains("Image committed.", StringComparison.Ordinal));
    }

    [TestCase("base.qcow2", "top.qcow2")]
    [TestCase("base.qcow2", "deep.qcow2")]
    [TestCase("top.qcow2", "deep.qcow2")]
    public void Commit_with_a_base_keeps_the_images_above_it_as_qemu_img_does(string baseName, string topName)
    {
        foreach (var side in new[] { "qemu", "ours" })
        {
            var directory = PathOf(side);
            System.IO.Directory.CreateDirectory(directory);
            Qemu.WorkingDirectory.Value = directory;
            Qemu.Img("create", "-q", "-f", "qcow2", "base.qcow2", "8M");
            Qemu.Io("base.qcow2", "write -P 1 0 8M");
            Qemu.Img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
            Qemu.Io("top.qcow2", "write -P 2 1M 2M", "write -z 6M 64k");
            Qemu.Img("create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "deep.qcow2");
            Qemu.Io("deep.qcow2", "write -P 3 2M 2M");
        }

        Qemu.WorkingDirectory.Value = PathOf("qemu");
        Qemu.Img("commit", "-q", "-b", baseName, topName);
        var ours = CliRunner.RunIn(PathOf("ours"), "commit", "-q", "-b", baseName, topName);
        ours.ExitCode.ShouldBe(0, ours.Error);
        foreach (var name in new[] { "base.qcow2", "top.qcow2", "deep.qcow2" })
        {
            string Map(string side)
            {
                Qemu.WorkingDirectory.Value = PathOf(side);
                var map = Qemu.Img("map", "--output=json", name);
                return System.Text.RegularExpressions.Regex.Replace(map, @", ""offset"": \d+", string.Empty); // where each side put its clusters
            }

            Map("ours").ShouldBe(Map("qemu"), name);
            Qemu.WorkingDirectory.Value = PathOf("ours");
            Qemu.AssertClean(name);
            Qemu.Compare(name, PathOf($"qemu/{name}"), "qcow2", "qcow2").ExitCode.ShouldBe(0, name);
        }
    }
}
