using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>
/// Issue 4, acceptance 7: a dedup workload (duplicates, overwrites of shared clusters, discards,
/// a journal that packs and a log store that freezes on the way) is cut at every write and every flush. After
/// each crash: qemu-img check finds no corruption but the one benign kind (below), everything
/// flushed reads back, and writing every content the workload used again (now through the
/// recovered index) stores exactly those bytes; after that session closes the image is fully clean.
/// </summary>
/// <remarks>
/// COPIED cannot change in the same write as the refcount, so a crash may leave two states that
/// qemu-img check counts as corruptions although neither lets any writer damage data:
/// "refcount 1, COPIED clear" (a sharing's flag cleared, its increment lost; or a survivor's flag
/// not yet set again), which only makes the next write copy the cluster; and "refcount 2 with
/// COPIED set" on a cluster that is referenced once (the increment landed, the new referrer's
/// entry did not), which is also a leak. What is never allowed is a second referrer on disk while
/// the first still has COPIED set. The recovery open repairs both before the index is used again.
/// </remarks>
[TestFixture]
[Category("Interop")]
public class DedupCrashTests : TempDirectoryFixture
{
    private const int WorkloadClusters = 96;
    private const int ProbeCluster = 200; // beyond the workload: where contents are rewritten after the crash
    private const long DiskSize = 1L << 20;
    private const int Pool = 8;
    private static readonly DedupOptions Dedup = new() { LogStoreOrder = 3, MaxIncarnations = 2 }; // 32 slots, a two-block journal

    private string _pristine = string.Empty;
    private int _clusterSize;

    private void MakeImage()
    {
        _pristine = PathOf("pristine.qcow2");
        using var image = Qcow2Image.Create(_pristine, new Qcow2CreateOptions { Size = DiskSize, ClusterSize = _clusterSize }.WithDedup(Dedup));
        image.Write(0, DedupOracle.Pattern(0, _clusterSize)); // an index entry from an earlier, cleanly closed session
    }

    [TestCase(4096, false)]
    [TestCase(4096, true)]
    [TestCase(512, true)] // many L2 tables: shares across tables order the referrer's table first
    public void Crashing_at_every_write_and_flush_never_corrupts_or_shares_wrong_bytes(int clusterSize, bool keepRandomUnflushedWrites)
    {
        _clusterSize = clusterSize;
        MakeImage();
        var dryRun = RunWorkload(PathOf("dry-run.qcow2"), long.MaxValue, keepRandomUnflushedWrites, seed: 0);
        TestContext.Out.WriteLine($"{dryRun.Writes} crash points; the dry run froze {dryRun.Freezes} times and packed {dryRun.Packs} times");
        dryRun.Freezes.ShouldBeGreaterThan(0);
        dryRun.Packs.ShouldBeGreaterThan(0);
        var step = keepRandomUnflushedWrites ? 3 : 1;
        var failures = new List<string>();
        for (var budget = 0L; budget < dryRun.Writes; budget += step)
        {
            var copy = PathOf($"crash-{budget}.qcow2");
            var outcome = RunWorkload(copy, budget, keepRandomUnflushedWrites, seed: (int)budget);
            outcome.Crashed.ShouldBeTrue();
            var problem = CheckRecovery(copy, outcome);
            if (problem is not null)
            {
                failures.Add($"crash at point {budget}: {problem}");
            }

            File.Delete(copy);
        }

        failures.ShouldBeEmpty();
    }

    /// <summary>Null when the crashed image recovered correctly, else what went wrong.</summary>
    private string? CheckRecovery(string path, WorkloadOutcome outcome)
    {
        var report = Qemu.Check(path);
        if (report.CheckErrors != 0 || report.Corruptions != BenignCopiedFlags(report.Text))
        {
            return $"qemu-img check after the crash: {report.Text}";
        }

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }.WithDedup(Dedup)))
        {
            var actual = new byte[DiskSize];
            image.Read(0, actual);
            var expected = outcome.Flushed.Read(0, (int)DiskSize);
            for (var i = 0; i < DiskSize; i++)
            {
                if (actual[i] != expected[i] && !outcome.TouchedAfterFlush.Contains(i / _clusterSize))
                {
                    return $"byte 0x{i:x} was flushed as 0x{expected[i]:x2} but reads 0x{actual[i]:x2}";
                }
            }

            // Every content the workload wrote, written again: a hit on an entry whose cluster
            // never got its bytes, or lost them, would show here.
            var probe = new byte[_clusterSize];
            for (var content = 0; content < Pool; content++)
            {
                var offset = (long)(ProbeCluster + content) * _clusterSize;
                image.Write(offset, DedupOracle.Pattern(content, _clusterSize));
                image.Read(offset, probe);
                if (!probe.AsSpan().SequenceEqual(DedupOracle.Pattern(content, _clusterSize)))
                {
                    return $"content {content} written after the crash reads back differently (shared with wrong bytes)";
                }
            }
        }

        report = Qemu.Check(path);
        return report.Corruptions != 0 || report.CheckErrors != 0 || report.Leaks != 0
            ? $"qemu-img check after the recovery session: {report.Text}"
            : null;
    }

    /// <summary>qemu-img check's COPIED complaints of the two harmless kinds described above.</summary>
    private int BenignCopiedFlags(string checkOutput)
    {
        var lines = checkOutput.Split('\n').Select(l => l.Trim()).ToList();
        return lines.Count(line =>
        {
            var match = System.Text.RegularExpressions.Regex.Match(line, "^ERROR OFLAG_COPIED data cluster: l2_entry=([0-9a-f]+) refcount=([0-9]+)$");
            if (!match.Success)
            {
                return false;
            }

            var entry = ulong.Parse(match.Groups[1].Value, System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
            var refcount = int.Parse(match.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
            var copied = (entry & (1UL << 63)) != 0;
            var cluster = (long)(entry & 0x00ff_ffff_ffff_fe00UL) / _clusterSize;
            return copied
                ? lines.Contains($"Leaked cluster {cluster} refcount={refcount} reference=1")
                : refcount == 1;
        });
    }

    /// <summary>Copies the pristine image and runs the dedup workload on it through a crashing storage.</summary>
    private WorkloadOutcome RunWorkload(string path, long budget, bool keepRandom, int seed)
    {
        File.Copy(_pristine, path, overwrite: true);
        using var file = FileStorage.Open(path, writable: true);
        var storage = new CrashingStorage(file, budget, new Random(seed)) { KeepRandomSubset = keepRandom, CrashAtFlushes = true };
        var model = new SparseModel(DiskSize);
        model.Write(0, DedupOracle.Pattern(0, _clusterSize));
        var outcome = new WorkloadOutcome { Flushed = model.Clone() };
        var random = new Random(5);
        try
        {
            var image = Qcow2Image.Open(storage, new Qcow2OpenOptions { Writable = true }.WithDedup(Dedup), leaveOpen: true);

            // Churn first: one cluster flips between two contents, so every write frees a cluster
            // and re-indexes a content. The journal fills while the log store stays tiny: a pack.
            for (var i = 0; i < 70; i++)
            {
                Write(image, model, outcome, _clusterSize, DedupOracle.Pattern(1 + (i % 2), _clusterSize));
            }
            for (var i = 0; i < 120; i++)
            {
                var cluster = random.Next(WorkloadClusters);
                var offset = (long)cluster * _clusterSize;
                switch (random.Next(10))
                {
                    case < 5: // a duplicate from the pool, often over a shared cluster
                        Write(image, model, outcome, offset, DedupOracle.Pattern(random.Next(Pool), _clusterSize));
                        break;
                    case < 7: // a partial write: the cluster changes (copied if shared, in place if not)
                        var bytes = new byte[random.Next(1, _clusterSize)];
                        random.NextBytes(bytes);
                        Write(image, model, outcome, offset + random.Next(_clusterSize - bytes.Length + 1), bytes);
                        break;
                    case 7:
                        outcome.TouchedAfterFlush.Add(cluster);
                        image.Discard(offset, _clusterSize);
                        model.Zero(offset, _clusterSize);
                        break;
                    default: // unique content: fills the tiny log store
                        Write(image, model, outcome, offset, DedupOracle.Pattern(1000 + i, _clusterSize));
                        break;
                }

                if (i % 9 == 8)
                {
                    image.Flush();
                    outcome.Flushed = model.Clone();
                    outcome.TouchedAfterFlush.Clear();
                }
            }

            var index = image.GetExtension<DedupExtension>()!.Index!;
            outcome.Freezes = index.Freezes;
            outcome.Packs = index.Packs;
            image.Dispose();
        }
        catch (IOException) when (storage.Crashed)
        {
            outcome.Crashed = true;
        }

        outcome.Writes = storage.Writes;
        return outcome;
    }

    private void Write(Qcow2Image image, SparseModel model, WorkloadOutcome outcome, long offset, byte[] data)
    {
        // Marked before the write: a write cut by the crash may have reached the disk in part.
        for (var cluster = offset / _clusterSize; cluster <= (offset + data.Length - 1) / _clusterSize; cluster++)
        {
            outcome.TouchedAfterFlush.Add(cluster);
        }

        image.Write(offset, data);
        model.Write(offset, data);
    }

    private sealed class WorkloadOutcome
    {
        public SparseModel Flushed { get; set; } = null!;

        public HashSet<long> TouchedAfterFlush { get; } = [];

        public bool Crashed { get; set; }

        public long Writes { get; set; }

        public int Freezes { get; set; }

        public int Packs { get; set; }
    }
}
