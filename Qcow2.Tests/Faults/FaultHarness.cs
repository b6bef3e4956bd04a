using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>One fault to inject into one run of a workload.</summary>
/// <param name="CrashAt">The write or flush at which the machine loses power.</param>
/// <param name="Mode">What survives of the unflushed writes.</param>
/// <param name="FailAt">The write or flush that fails with an I/O error (the machine stays up).</param>
/// <param name="FailReadAt">The read that fails with an I/O error.</param>
public readonly record struct Fault(long CrashAt = long.MaxValue, CrashMode Mode = CrashMode.DropUnflushed, long FailAt = long.MaxValue, long FailReadAt = long.MaxValue)
{
    public static Fault None => new(CrashAt: long.MaxValue, FailAt: long.MaxValue, FailReadAt: long.MaxValue); // not default(Fault), whose points are 0

    public bool InjectsErrors => FailAt != long.MaxValue || FailReadAt != long.MaxValue;
}

/// <summary>What a run did.</summary>
public sealed record FaultRun(string Path, long Operations, long Reads, bool Crashed, int InjectedFailures, IReadOnlyList<string> Problems, GuestHistory History, IReadOnlyDictionary<string, int> Coverage);

/// <summary>Totals over the fault points of one workload, printed by tests and the long-run driver alike.</summary>
public sealed class FaultTally
{
    public int Points { get; set; }

    public int Crashes { get; set; }

    public int IoErrors { get; set; }

    public int LeakyStates { get; set; }

    public int DirtyRepairs { get; set; }

    public List<string> Failures { get; } = [];

    /// <summary>What qemu-img check reported on the images that needed the dirty-bit repair.</summary>
    public List<string> DirtyRepairReports { get; } = [];

    public override string ToString() =>
        $"{Points} points ({Crashes} crashes, {IoErrors} I/O errors): {LeakyStates} left leaks, {DirtyRepairs} needed the dirty-bit repair, {Failures.Count} failed";
}

/// <summary>
/// Runs a workload on a copy of its pristine image through a <see cref="FaultyStorage"/> and
/// judges what is left: qemu-img check finds no corruption (or the dirty bit is set and one
/// qemu-io read-write open repairs it), every guest byte holds a value it was allowed to hold, and
/// after our next read-write open the image checks fully clean with the same guest bytes.
/// </summary>
public sealed class FaultHarness(FaultWorkload workload, string directory, bool async)
{
    private string? _pristine;
    private SparseModel? _initial;

    /// <summary>
    /// Fault points to try per workload and mode (QCOWDEDUP_CRASH_POINTS, a number or "all"):
    /// every point when a run offers fewer.
    /// </summary>
    public static int PointsPerRun(int ciDefault) => Environment.GetEnvironmentVariable("QCOWDEDUP_CRASH_POINTS") switch
    {
        "all" => int.MaxValue,
        var text when int.TryParse(text, out var points) && points > 0 => points,
        _ => ciDefault,
    };

    /// <summary>Up to <paramref name="wanted"/> points spread over [0, total), all of them when there are fewer.</summary>
    public static IEnumerable<long> Sample(long total, int wanted, int seed)
    {
        if (total <= wanted)
        {
            for (var point = 0L; point < total; point++)
            {
                yield return point;
            }

            yield break;
        }

        var random = new Random(seed);
        var stride = (double)total / wanted;
        for (var i = 0; i < wanted; i++)
        {
            yield return Math.Min(total - 1, (long)(i * stride) + random.NextInt64(0, Math.Max(1, (long)stride)));
        }
    }

    /// <summary>Runs the workload on a fresh copy of the pristine image, named <paramref name="name"/> beside it.</summary>
    public FaultRun Run(string name, Fault fault, int seed, List<string>? trace = null)
    {
        EnsurePristine();
        var path = Path.Combine(Path.GetDirectoryName(_pristine)!, name);
        File.Copy(_pristine!, path, overwrite: true);
        var history = new GuestHistory(_initial!);
        var problems = new List<string>();
        using var file = FileStorage.Open(path, writable: true);
        var storage = new FaultyStorage(file) { CrashAt = fault.CrashAt, Mode = fault.Mode, FailAt = fault.FailAt, FailReadAt = fault.FailReadAt, Seed = seed, Trace = trace };
        var crashed = false;
        var coverage = new Dictionary<string, int>();
        try
        {
            var image = async
                ? Qcow2Image.OpenAsync(storage, workload.Options(), leaveOpen: true).AsTask().GetAwaiter().GetResult()
                : Qcow2Image.Open(storage, workload.Options(), leaveOpen: true);
            var context = new WorkloadContext(image, history, async, seed: 17)
            {
                ToleratedFailures = fault.InjectsErrors ? () => storage.Failures : null,
                ErrorsMustSurface = fault.FailAt != long.MaxValue,
            };
            workload.Body(context);
            foreach (var (what, count) in context.Coverage)
            {
                coverage[what] = count;
            }

            context.Close();
            problems.AddRange(context.Problems);
        }
        catch (IOException) when (storage.Crashed || storage.Failures > 0)
        {
            crashed = storage.Crashed;
        }

        storage.SettleAfterRun();
        return new FaultRun(path, storage.Operations, storage.Reads, crashed, storage.Failures, problems, history, coverage);
    }

    /// <summary>Judges the image a run left; null when all is well, else what went wrong.</summary>
    public string? Judge(FaultRun run, FaultTally tally)
    {
        var path = run.Path;
        if (run.Problems.Count > 0)
        {
            return string.Join("; ", run.Problems);
        }

        var report = Qemu.Check(path);
        if (report.Corruptions != 0 || report.CheckErrors != 0)
        {
            if (!IsDirty(path))
            {
                return $"qemu-img check after the fault (no dirty bit): {report.Text}";
            }

            var twin = path + ".qemu-repaired";
            File.Copy(path, twin, overwrite: true);
            Qemu.IoUnchecked(twin, "flush");
            var repaired = Qemu.Check(twin);
            File.Delete(twin);
            if (repaired.Corruptions != 0 || repaired.CheckErrors != 0)
            {
                return $"qemu-img check after the fault, even after qemu-io's read-write open repaired the dirty image: {repaired.Text}";
            }

            tally.DirtyRepairs++;
            tally.DirtyRepairReports.Add(string.Join("; ", report.Text.Split('\n').Where(l => l.StartsWith("ERROR", StringComparison.Ordinal)).Take(4)));
        }
        else if (report.Leaks > 0)
        {
            tally.LeakyStates++;
        }

        byte[] before;
        using (var image = Qcow2Image.Open(path))
        {
            before = ReadAll(image, run.History.Size);
        }

        if (run.History.Verify(before) is { } wrong)
        {
            return wrong;
        }

        using (var image = Qcow2Image.Open(path, workload.Options()))
        {
            var after = ReadAll(image, run.History.Size);
            if (!after.AsSpan().SequenceEqual(before))
            {
                return "our read-write open changed guest data while recovering";
            }

            if (workload.AfterRecovery?.Invoke(image) is { } problem)
            {
                return problem;
            }
        }

        report = Qemu.Check(path);
        return report.Corruptions != 0 || report.CheckErrors != 0 || report.Leaks != 0
            ? $"qemu-img check after our recovery session: {report.Text}"
            : null;
    }

    private static byte[] ReadAll(Qcow2Image image, long historySize)
    {
        var bytes = new byte[Math.Min(image.Size, historySize)];
        image.Read(0, bytes);
        return bytes;
    }

    private static bool IsDirty(string path)
    {
        using var stream = File.OpenRead(path);
        var header = new byte[80];
        stream.ReadExactly(header);
        return header.AsSpan(4, 4).SequenceEqual(new byte[] { 0, 0, 0, 3 }) && (header[79] & 1) != 0;
    }

    private void EnsurePristine()
    {
        if (_pristine is not null)
        {
            return;
        }

        var dir = Path.Combine(directory, "pristine-" + workload.Name);
        Directory.CreateDirectory(dir);
        _pristine = workload.Create(dir);
        using var image = Qcow2Image.Open(_pristine);
        var model = new SparseModel(image.Size);
        var bytes = new byte[image.Size];
        image.Read(0, bytes);
        model.Write(0, bytes);
        _initial = model;
    }
}
