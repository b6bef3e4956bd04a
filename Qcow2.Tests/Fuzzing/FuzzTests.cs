namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>
/// Hostile input (DESIGN.md §7): mutated images either work or fail with a documented exception
/// that names what is wrong — no other exception, no hang, no allocation out of proportion to the
/// file, no write that leaves more corruption than qemu-io's same write. tools/fuzz.sh runs the
/// same campaign for longer (QCOWDEDUP_FUZZ_CASES, QCOWDEDUP_FUZZ_SEED).
/// </summary>
[TestFixture]
[Category("Interop")]
public class FuzzTests
{
    [Test]
    [CancelAfter(15 * 60 * 1000)]
    public void Mutated_images_fail_only_with_documented_exceptions()
    {
        var settings = FuzzSettings.FromEnvironment(defaultCases: 20000);
        var report = new FuzzCampaign(settings).Run();
        TestContext.Out.WriteLine(report);
        report.ShouldSatisfyAllConditions(
            () => report.Cases.ShouldBe(settings.Cases),
            () => report.ExceptionsByType.ShouldBeEmpty(report.ToString()),
            () => report.Hangs.ShouldBe(0, report.ToString()),
            () => report.OverCap.ShouldBe(0, report.ToString()),
            () => report.OracleDisagreements.ShouldBe(0, report.ToString()));
    }

    /// <summary>Every crasher the fuzzer found, kept in testdata/fuzz/, still runs clean.</summary>
    [TestCaseSource(nameof(Fixtures))]
    public void Fuzz_fixture_replays_clean(string fixture)
    {
        var input = FuzzFixtures.Load(Path.Combine(FuzzFixtures.RepositoryDirectory, fixture));
        var seed = FuzzSeeds.Find(input.Seed);
        var (result, hung) = new FuzzCampaign(new FuzzSettings()).RunGuarded(input, seed, writeSeed: 1);
        hung.ShouldBeFalse();
        result!.Undocumented.ShouldBeEmpty(string.Join("\n", result.Undocumented.Select(u => $"{u.Step}: {u.Error}")));
        result.LargestStep.ShouldBeLessThanOrEqualTo(FuzzSettings.AllocationCap(input.Image));
    }

    private static IEnumerable<string> Fixtures()
    {
        var directory = FuzzFixtures.RepositoryDirectory;
        return Directory.Exists(directory)
            ? Directory.EnumerateFiles(directory).Select(Path.GetFileName).Where(n => n!.EndsWith(".qcow2", StringComparison.Ordinal) || n.EndsWith(".qcow2.gz", StringComparison.Ordinal)).Order(StringComparer.Ordinal)!
            : [];
    }
}
