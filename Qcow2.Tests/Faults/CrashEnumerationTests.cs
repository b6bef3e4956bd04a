using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>
/// Issue 9, acceptance 1 and 6: every workload is cut by a power loss at sampled writes and
/// flushes (QCOWDEDUP_CRASH_POINTS per run; tools/long-run.sh enumerates them all), in each crash
/// mode, through the synchronous and the asynchronous API. After every crash qemu-img check finds
/// no corruption (or the dirty bit is set and QEMU's repair fixes it), no guest byte holds a value
/// it never had, flushed data is intact, and our next read-write open leaves the image fully clean.
/// </summary>
[TestFixture]
[Category("Interop")]
public class CrashEnumerationTests : TempDirectoryFixture
{
    private const int CiPoints = 24;

    public static IEnumerable<FaultWorkload> Workloads => FaultWorkloads.All;

    [Test]
    public void Crash_leaves_only_leaks_and_allowed_bytes(
        [ValueSource(nameof(Workloads))] FaultWorkload workload, [Values] CrashMode mode, [Values] bool async)
    {
        var harness = new FaultHarness(workload, Directory, async);
        var tally = new FaultTally();
        var dryRun = harness.Run("dry-run.qcow2", Fault.None, seed: 0);
        dryRun.InjectedFailures.ShouldBe(0);
        dryRun.Coverage.ShouldAllBe(c => c.Value > 0, "the workload exercises what it names");
        dryRun.Crashed.ShouldBeFalse();
        harness.Judge(dryRun, tally).ShouldBeNull();
        tally.LeakyStates.ShouldBe(0, "a run without faults leaves no leaks");

        foreach (var point in FaultHarness.Sample(dryRun.Operations, FaultHarness.PointsPerRun(CiPoints), seed: (int)mode))
        {
            var run = harness.Run($"crash-{point}.qcow2", new Fault(CrashAt: point, Mode: mode), seed: (int)point);
            run.Crashed.ShouldBeTrue($"the workload issues operation {point}");
            tally.Points++;
            tally.Crashes++;
            if (harness.Judge(run, tally) is { } problem)
            {
                tally.Failures.Add($"crash at operation {point}: {problem}");
            }

            File.Delete(run.Path);
        }

        TestContext.Out.WriteLine($"{workload} {mode} {(async ? "async" : "sync")}: {dryRun.Operations} operations{string.Concat(dryRun.Coverage.Select(c => $", {c.Value} {c.Key}"))}; {tally}");
        foreach (var report in tally.DirtyRepairReports.Distinct())
        {
            TestContext.Out.WriteLine($"  repaired through the dirty bit: {report}");
        }

        tally.Failures.ShouldBeEmpty();
    }

    /// <summary>
    /// A header update (snapshot table, refcount table, L1 table, feature bits) is the moment a
    /// structure changes hands: every workload is cut right after each one and after the flush
    /// that follows, in every mode, not a sample. (Deleting a snapshot rewrote the snapshot table
    /// before setting the dirty bit: a crash there left leaks that no open repaired.)
    /// </summary>
    [Test]
    public void Crash_right_after_a_header_update_leaves_only_leaks(
        [ValueSource(nameof(Workloads))] FaultWorkload workload, [Values] CrashMode mode)
    {
        var harness = new FaultHarness(workload, Directory, async: false);
        var trace = new List<string>();
        harness.Run("dry-run.qcow2", Fault.None, seed: 0, trace);
        var points = trace.Select(HeaderWrite).OfType<long>().SelectMany(p => new[] { p + 1, p + 2 }).Where(p => p < trace.Count).Distinct().ToList();
        var tally = new FaultTally();
        foreach (var point in points)
        {
            var run = harness.Run($"header-{point}.qcow2", new Fault(CrashAt: point, Mode: mode), seed: (int)point);
            tally.Points++;
            tally.Crashes++;
            if (harness.Judge(run, tally) is { } problem)
            {
                tally.Failures.Add($"crash at operation {point}: {problem}");
            }

            File.Delete(run.Path);
        }

        TestContext.Out.WriteLine($"{workload} {mode}: {points.Count} points after header updates; {tally}");
        tally.Failures.ShouldBeEmpty();
    }

    /// <summary>
    /// The operation number of a trace line "N: write L bytes at 0xOFFSET" inside the 512-byte
    /// header, except the feature bits (the dirty bit changes at every flush; the samples cover it).
    /// </summary>
    private static long? HeaderWrite(string line)
    {
        const long IncompatibleFeatures = 0x48;
        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return parts is [var number, "write", _, "bytes", "at", var at, ..]
            && long.Parse(at[2..], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture) is < 512 and not IncompatibleFeatures
            ? long.Parse(number.TrimEnd(':'), System.Globalization.CultureInfo.InvariantCulture)
            : null;
    }
}
