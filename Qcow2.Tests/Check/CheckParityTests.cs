using System.Security.Cryptography;
using System.Text.Json;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Check;

/// <summary>
/// Issue 5, acceptance 1: for every kind of damage in <see cref="BrokenImages"/>, qcow2 check says
/// what qemu-img check says (JSON, counts, exit code), and its repairs leave what qemu-img's leave:
/// a clean image where qemu-img -r all cleans it, the same guest bytes, and every cluster the
/// damage did not touch intact. Issue 9, acceptance 5: where qemu-img -r all leaves damage, ours
/// leaves a clean image too and says on stderr what it changed or dropped.
/// </summary>
[TestFixture]
[Category("Interop")]
public sealed class CheckParityTests : TempDirectoryFixture
{
    public static IEnumerable<TestCaseData> Kinds() =>
        BrokenImages.All.Select(kind => new TestCaseData(kind).SetArgDisplayNames(kind.Name));

    [Test]
    public void The_corpus_has_at_least_fifteen_kinds_qemu_img_repairs() =>
        BrokenImages.All.Count(k => k.QemuRepairs).ShouldBeGreaterThanOrEqualTo(15);

    [TestCaseSource(nameof(Kinds))]
    public void Check_reports_what_qemu_img_reports_and_writes_nothing(BrokenImage kind)
    {
        var path = MakeBroken(kind).Broken;
        var bytesBefore = Hash(path);

        var theirs = Qemu.ImgResult("check", "--output=json", path);
        Counts(theirs.Output).ShouldBe(kind.Expected, "the corpus pins what qemu-img 7.2 reports for this kind");
        var ours = CliRunner.Run("check", "--output", "json", path);

        ours.ExitCode.ShouldBe(theirs.ExitCode, ours.Error);
        ours.Output.ShouldBe(theirs.Output, "the same JSON, key for key");
        Hash(path).ShouldBe(bytesBefore, "checking without -r opens the image read-only");
    }

    /// <remarks>
    /// Where qemu-img's -r all leaves the image broken, ours goes further (issue 9): the report then
    /// differs from qemu-img's, the image comes out clean, and stderr says what was changed or
    /// dropped (<see cref="RepairBeyondQemuTests"/> does the same through the library).
    /// </remarks>
    [TestCaseSource(nameof(Kinds))]
    public void Repair_all_leaves_a_clean_image_and_keeps_intact_data(BrokenImage kind)
    {
        var (valid, broken) = MakeBroken(kind);
        var (theirs, ours, said) = RepairBoth(broken, "all", sameReport: kind.QemuRepairs);

        Qemu.AssertClean(ours);
        if (!kind.QemuRepairs)
        {
            Qemu.Check(theirs).ExitCode.ShouldNotBe(0, "the corpus says qemu-img -r all cannot repair this kind");
            said.ShouldContain(kind.Salvage ?? "<the corpus names what our repair says for this kind>", Case.Sensitive, "qemu-img leaves this kind broken: our output says what we changed or dropped");
        }

        if (kind.ReadableAfterRepair)
        {
            var ourDisk = ToRaw(ours);
            AssertSameBytes(ourDisk, ToRaw(theirs), [], "guest bytes after our repair and after qemu-img's");
            AssertSameBytes(ourDisk, ToRaw(valid), kind.BrokenGuest, "guest bytes the damage did not touch");
        }
    }

    [TestCaseSource(nameof(Kinds))]
    public void Repair_leaks_leaves_what_qemu_img_leaves(BrokenImage kind)
    {
        var (_, broken) = MakeBroken(kind);
        var (theirs, ours, _) = RepairBoth(broken, "leaks");

        var expected = Qemu.Check(theirs);
        var actual = Qemu.Check(ours);
        (actual.Corruptions, actual.Leaks, actual.CheckErrors, actual.ExitCode).ShouldBe((expected.Corruptions, expected.Leaks, expected.CheckErrors, expected.ExitCode), actual.Text);
    }

    [TestCase("leaked_cluster", "")]
    [TestCase("leaked_cluster", "leaks")]
    [TestCase("refcount_zero_for_used_data_cluster", "")]
    [TestCase("refcount_zero_for_used_data_cluster", "leaks")]
    [TestCase("refcount_zero_for_used_data_cluster", "all")]
    [TestCase("copied_missing_on_data", "all")]
    [TestCase("l2_table_with_refcount_two", "leaks")]
    [TestCase("compressed_entry_with_copied", "")]
    [TestCase("refcount_table_entry_unaligned", "")]
    [TestCase("refcount_table_entry_reserved_bits", "leaks")]
    [TestCase("preallocated_entry_unaligned", "all")]
    [TestCase("dirty_lazy_refcounts", "all")]
    [TestCase("truncated_before_l1_table", "")]
    [TestCase("truncated_inside_the_header_cluster", "")]
    [TestCase("truncated_inside_the_data", "leaks")]
    public void Human_output_is_qemu_imgs(string name, string repair)
    {
        var broken = MakeBroken(BrokenImages.All.Single(k => k.Name == name)).Broken;
        string[] args = repair.Length == 0 ? [] : ["-r", repair];
        var theirs = Qemu.ImgResult(["check", .. args, Copy(broken, "theirs.qcow2")]);
        var ours = CliRunner.Run(["check", .. args, Copy(broken, "ours.qcow2")]);

        ours.ExitCode.ShouldBe(theirs.ExitCode);
        ours.Output.ShouldBe(theirs.Output);
        WithoutProgramName(ours.Error).ShouldBe(WithoutProgramName(theirs.Error), "the same diagnostics on stderr");
    }

    /// <summary>Builds the kind's valid image, copies it, and breaks the copy.</summary>
    private (string Valid, string Broken) MakeBroken(BrokenImage kind)
    {
        var valid = PathOf("valid.qcow2");
        kind.Build(valid);
        var broken = Copy(valid, "broken.qcow2");
        kind.Break(broken);
        return (valid, broken);
    }

    /// <summary>
    /// Repairs one copy with qemu-img and one with qcow2; their JSON reports and exit codes must
    /// agree (with <paramref name="sameReport"/>; otherwise ours must end clean, exit 0). Returns
    /// the two copies and what ours printed on stderr.
    /// </summary>
    private (string Theirs, string Ours, string Said) RepairBoth(string broken, string repair, bool sameReport = true)
    {
        var theirs = Copy(broken, "repaired.qcow2");
        var theirResult = Qemu.ImgResult("check", "-r", repair, "--output=json", theirs);
        var ours = Copy(broken, "ours.qcow2");
        var ourResult = CliRunner.Run("check", "-r", repair, "--output=json", ours);

        if (!sameReport)
        {
            ourResult.ExitCode.ShouldBe(0, ourResult.Error);
            return (theirs, ours, ourResult.Error);
        }

        ourResult.ExitCode.ShouldBe(theirResult.ExitCode, ourResult.Error);
        ourResult.Output.Replace("ours.qcow2", "repaired.qcow2", StringComparison.Ordinal).ShouldBe(theirResult.Output);
        return (theirs, ours, ourResult.Error);
    }

    private string Copy(string source, string name)
    {
        var destination = PathOf(name);
        File.Copy(source, destination, overwrite: true);
        return destination;
    }

    private static string ToRaw(string image)
    {
        var raw = image + ".raw";
        Qemu.Img("convert", "-U", "-f", "qcow2", "-O", "raw", image, raw);
        return raw;
    }

    /// <summary>Compares two raw disks chunk by chunk, skipping <paramref name="excluded"/> guest ranges.</summary>
    private static void AssertSameBytes(string actual, string expected, (long Offset, long Length)[] excluded, string what)
    {
        const int ChunkSize = BrokenImages.ClusterSize;
        using var first = File.OpenRead(actual);
        using var second = File.OpenRead(expected);
        first.Length.ShouldBe(second.Length, what);
        var a = new byte[ChunkSize];
        var b = new byte[ChunkSize];
        for (long offset = 0; offset < first.Length; offset += ChunkSize)
        {
            var length = (int)Math.Min(ChunkSize, first.Length - offset);
            first.ReadExactly(a, 0, length);
            second.ReadExactly(b, 0, length);
            if (excluded.Any(r => offset < r.Offset + r.Length && r.Offset < offset + length))
            {
                continue;
            }

            a.AsSpan(0, length).SequenceEqual(b.AsSpan(0, length)).ShouldBeTrue($"{what} differ in the cluster at guest offset 0x{offset:x}");
        }
    }

    private static QemuCounts Counts(string json)
    {
        using var document = JsonDocument.Parse(json.Length > 0 ? json : "{}");
        int Get(string key) => document.RootElement.TryGetProperty(key, out var value) ? value.GetInt32() : 0;
        return new QemuCounts(Get("corruptions"), Get("leaks"), Get("check-errors"));
    }

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    /// <summary>qemu-img prefixes its own messages with "qemu-img: ", qcow2 with "qcow2: "; the rest must match.</summary>
    private static string WithoutProgramName(string text) =>
        string.Join('\n', text.Split('\n').Select(l => l.StartsWith("qemu-img: ", StringComparison.Ordinal) ? l["qemu-img: ".Length..] : l.StartsWith("qcow2: ", StringComparison.Ordinal) ? l["qcow2: ".Length..] : l));
}
