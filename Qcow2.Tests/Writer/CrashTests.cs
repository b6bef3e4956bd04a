using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Issue 3, acceptance 7: the ordering rules hold under crashes. An allocating workload is cut
/// at every write it issues; the surviving image must have no corruption (leaks are allowed,
/// as in QEMU) and everything written before the last completed flush must read back.
/// </summary>
[TestFixture]
[Category("Interop")]
public class CrashTests : TempDirectoryFixture
{
    private const long DiskSize = 4 << 20;
    private string _pristine = string.Empty;

    [SetUp]
    public void MakeImage()
    {
        var raw = PathOf("base.raw");
        var backing = new byte[DiskSize - 8192];
        new Random(3).NextBytes(backing);
        File.WriteAllBytes(raw, backing);
        _pristine = PathOf("pristine.qcow2");
        using var image = Qcow2Image.Create(_pristine, new Qcow2CreateOptions
        {
            Size = DiskSize,
            ClusterSize = 512,
            RefcountBits = 64,
            BackingFile = "base.raw",
            BackingFormat = "raw",
        });
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Crashing_at_every_write_leaves_no_corruption_and_keeps_flushed_data(bool keepRandomUnflushedWrites)
    {
        var totalWrites = RunWorkload(PathOf("dry-run.qcow2"), long.MaxValue, keepRandomUnflushedWrites, seed: 0).Writes;
        totalWrites.ShouldBeGreaterThan(100);
        var step = keepRandomUnflushedWrites ? 3 : 1;
        var corruptPoints = new List<string>();
        var leakyPoints = 0;
        for (var budget = 0L; budget < totalWrites; budget += step)
        {
            var copy = PathOf($"crash-{budget}.qcow2");
            var outcome = RunWorkload(copy, budget, keepRandomUnflushedWrites, seed: (int)budget);
            outcome.Crashed.ShouldBeTrue();

            var report = Qemu.Check(copy);
            if (report.Corruptions != 0 || report.CheckErrors != 0)
            {
                corruptPoints.Add($"write {budget}: {report.Text}");
            }
            else
            {
                leakyPoints += report.Leaks > 0 ? 1 : 0;
                AssertFlushedDataSurvived(copy, outcome, budget);
            }

            File.Delete(copy);
        }

        TestContext.Out.WriteLine($"{totalWrites} write points, {leakyPoints} crash states with leaked clusters");
        corruptPoints.ShouldBeEmpty();
    }

    private void AssertFlushedDataSurvived(string path, WorkloadOutcome outcome, long budget)
    {
        using var image = Qcow2Image.Open(path);
        var actual = new byte[DiskSize];
        image.Read(0, actual);
        var expected = outcome.Flushed.Read(0, (int)DiskSize);
        for (var i = 0; i < DiskSize; i++)
        {
            if (actual[i] != expected[i] && !outcome.TouchedAfterFlush.Contains(i / 512))
            {
                Assert.Fail($"Crash at write {budget}: byte 0x{i:x} was flushed as 0x{expected[i]:x2} but reads 0x{actual[i]:x2}.");
            }
        }
    }

    /// <summary>Copies the pristine image and runs the workload on it through a crashing storage.</summary>
    private WorkloadOutcome RunWorkload(string path, long budget, bool keepRandom, int seed)
    {
        File.Copy(_pristine, path, overwrite: true);
        using var file = FileStorage.Open(path, writable: true);
        var storage = new CrashingStorage(file, budget, new Random(seed)) { KeepRandomSubset = keepRandom };
        var model = new SparseModel(DiskSize);
        model.Write(0, File.ReadAllBytes(PathOf("base.raw")));
        var outcome = new WorkloadOutcome { Flushed = model.Clone() };
        var random = new Random(11);
        try
        {
            var image = Qcow2Image.Open(storage, new Qcow2OpenOptions { Writable = true }, leaveOpen: true);
            for (var i = 0; i < 40; i++)
            {
                // Scattered writes: fresh clusters in new L2 tables and refcount blocks, partial
                // clusters copied from the backing file, some overwrites.
                var offset = random.NextInt64(0, DiskSize - 4096);
                var length = random.Next(1, 3000);
                var data = new byte[length];
                random.NextBytes(data);
                for (var sector = offset / 512; sector <= (offset + length - 1) / 512; sector++)
                {
                    outcome.TouchedAfterFlush.Add(sector); // before the write: a write cut by the crash may have landed in part
                }

                image.Write(offset, data);
                model.Write(offset, data);

                if (i % 7 == 6)
                {
                    image.Flush();
                    outcome.Flushed = model.Clone();
                    outcome.TouchedAfterFlush.Clear();
                }
            }

            image.Dispose();
        }
        catch (IOException) when (storage.Crashed)
        {
            outcome.Crashed = true;
        }

        outcome.Writes = storage.Writes;
        return outcome;
    }

    private sealed class WorkloadOutcome
    {
        public SparseModel Flushed { get; set; } = null!;

        public HashSet<long> TouchedAfterFlush { get; } = [];

        public bool Crashed { get; set; }

        public long Writes { get; set; }
    }
}
