using System.Globalization;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>
/// An L1 entry or a refcount table entry is written alone, right after the table it points at:
/// when that one write fails, the table in memory must not run ahead of the disk (later changes
/// would land in a table the image on disk does not reach). Every such write of every workload
/// is failed once, not a sample.
/// </summary>
[TestFixture]
[Category("Interop")]
public class TableEntryErrorTests : TempDirectoryFixture
{
    private const long IncompatibleFeaturesField = 0x48;

    public static IEnumerable<FaultWorkload> Workloads => FaultWorkloads.All;

    [Test]
    public void A_failed_single_entry_write_leaves_a_consistent_image([ValueSource(nameof(Workloads))] FaultWorkload workload)
    {
        var harness = new FaultHarness(workload, Directory, async: false);
        var trace = new List<string>();
        harness.Run("dry-run.qcow2", Fault.None, seed: 0, trace);
        var points = trace.Select(EntryWrite).OfType<long>().ToList();
        var tally = new FaultTally();
        foreach (var point in points)
        {
            var run = harness.Run($"entry-{point}.qcow2", new Fault(FailAt: point), seed: (int)point);
            run.InjectedFailures.ShouldBe(1);
            tally.Points++;
            tally.IoErrors++;
            if (harness.Judge(run, tally) is { } problem)
            {
                tally.Failures.Add($"I/O error at operation {point} ({trace[(int)point]}): {problem}");
            }

            File.Delete(run.Path);
        }

        TestContext.Out.WriteLine($"{workload}: {points.Count} single-entry table writes; {tally}");
        tally.Failures.ShouldBeEmpty();
    }

    /// <summary>The operation number of a trace line "N: write 8 bytes at 0xOFFSET" that is not the header's feature bits.</summary>
    private static long? EntryWrite(string line)
    {
        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts is [var number, "write", "8", "bytes", "at", var at, ..]
            && long.Parse(at[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture) != IncompatibleFeaturesField)
        {
            return long.Parse(number.TrimEnd(':'), CultureInfo.InvariantCulture);
        }

        return null;
    }
}
