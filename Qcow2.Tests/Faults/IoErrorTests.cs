using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>
/// Issue 9, acceptance 2: an I/O error injected at sampled writes and flushes of every workload
/// surfaces as an <see cref="IOException"/> from the call during which it happened; the workload
/// goes on (later calls work or fail with IOException), the machine stays up, and the image left
/// behind passes the same checks as after a crash.
/// </summary>
[TestFixture]
[Category("Interop")]
public class IoErrorTests : TempDirectoryFixture
{
    private const int CiPoints = 24;
    private const int CiReadPoints = 12;

    public static IEnumerable<FaultWorkload> Workloads => FaultWorkloads.All;

    [Test]
    public void An_io_error_fails_its_call_and_leaves_a_consistent_image(
        [ValueSource(nameof(Workloads))] FaultWorkload workload, [Values] bool async)
    {
        var harness = new FaultHarness(workload, Directory, async);
        var tally = new FaultTally();
        var dryRun = harness.Run("dry-run.qcow2", Fault.None, seed: 0);
        dryRun.InjectedFailures.ShouldBe(0);
        dryRun.Coverage.ShouldAllBe(c => c.Value > 0, "the workload exercises what it names");
        foreach (var point in FaultHarness.Sample(dryRun.Operations, FaultHarness.PointsPerRun(CiPoints), seed: 9))
        {
            var run = harness.Run($"error-{point}.qcow2", new Fault(FailAt: point), seed: (int)point);
            run.InjectedFailures.ShouldBe(1, $"the workload issues operation {point}");
            tally.Points++;
            tally.IoErrors++;
            if (harness.Judge(run, tally) is { } problem)
            {
                tally.Failures.Add($"I/O error at operation {point}: {problem}");
            }

            File.Delete(run.Path);
        }

        Report(workload, async, $"{dryRun.Operations} operations", dryRun, tally);
    }

    [Test]
    public void A_read_error_fails_its_call_and_leaves_a_consistent_image(
        [ValueSource(nameof(Workloads))] FaultWorkload workload, [Values] bool async)
    {
        var harness = new FaultHarness(workload, Directory, async);
        var tally = new FaultTally();
        var dryRun = harness.Run("dry-run.qcow2", Fault.None, seed: 0);
        foreach (var point in FaultHarness.Sample(dryRun.Reads, FaultHarness.PointsPerRun(CiReadPoints), seed: 11))
        {
            var run = harness.Run($"read-error-{point}.qcow2", new Fault(FailReadAt: point), seed: (int)point);
            run.InjectedFailures.ShouldBe(1, $"the workload issues read {point}");
            tally.Points++;
            tally.IoErrors++;
            if (harness.Judge(run, tally) is { } problem)
            {
                tally.Failures.Add($"I/O error at read {point}: {problem}");
            }

            File.Delete(run.Path);
        }

        Report(workload, async, $"{dryRun.Reads} reads", dryRun, tally);
    }

    private static void Report(FaultWorkload workload, bool async, string offered, FaultRun dryRun, FaultTally tally)
    {
        TestContext.Out.WriteLine($"{workload} {(async ? "async" : "sync")}: {offered}{string.Concat(dryRun.Coverage.Select(c => $", {c.Value} {c.Key}"))}; {tally}");
        foreach (var report in tally.DirtyRepairReports.Distinct())
        {
            TestContext.Out.WriteLine($"  repaired through the dirty bit: {report}");
        }

        tally.Failures.ShouldBeEmpty();
    }
}
