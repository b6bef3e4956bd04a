using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>The counts a fuzz run reports (the CI test and tools/fuzz.sh print the same).</summary>
internal sealed class FuzzReport
{
    public int Cases { get; set; }

    public int Refused { get; set; }

    public SortedDictionary<string, int> ExceptionsByType { get; } = new(StringComparer.Ordinal);

    public int Hangs { get; set; }

    public int OverCap { get; set; }

    public long MaxAllocated { get; set; }

    public int OracleChecks { get; set; }

    public int OracleDisagreements { get; set; }

    public TimeSpan Elapsed { get; set; }

    public List<string> Findings { get; } = [];

    public int Failures => ExceptionsByType.Values.Sum() + Hangs + OverCap + OracleDisagreements;

    public override string ToString()
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"cases: {Cases} in {Elapsed.TotalSeconds:F1} s");
        text.AppendLine(CultureInfo.InvariantCulture, $"exceptions (undocumented): {ExceptionsByType.Values.Sum()}{(ExceptionsByType.Count == 0 ? string.Empty : " — " + string.Join(", ", ExceptionsByType.Select(e => $"{e.Key} {e.Value}")))}");
        text.AppendLine(CultureInfo.InvariantCulture, $"hangs: {Hangs}");
        text.AppendLine(CultureInfo.InvariantCulture, $"over-cap allocations: {OverCap} (largest step {MaxAllocated >> 20} MiB)");
        text.AppendLine(CultureInfo.InvariantCulture, $"oracle checks: {OracleChecks}, disagreements: {OracleDisagreements}");
        foreach (var finding in Findings.Take(40))
        {
            text.AppendLine(finding);
        }

        return text.ToString();
    }
}

/// <summary>Settings of a fuzz run, from the environment where tools/fuzz.sh sets them.</summary>
internal sealed record FuzzSettings
{
    /// <summary>Per-case watchdog. Cases take milliseconds; seconds means a loop that does not end.</summary>
    public TimeSpan CaseTimeout { get; init; } = TimeSpan.FromSeconds(20);

    public int Cases { get; init; } = 20000;

    public int Seed { get; init; } = 1;

    /// <summary>Every Nth case is also replayed against qemu-io on a twin (processes are slow).</summary>
    public int OracleEvery { get; init; } = 500;

    public string? CrasherDirectory { get; init; }

    public static FuzzSettings FromEnvironment(int defaultCases) => new()
    {
        Cases = Int("QCOWDEDUP_FUZZ_CASES") ?? defaultCases,
        Seed = Int("QCOWDEDUP_FUZZ_SEED") ?? 1,
        OracleEvery = Int("QCOWDEDUP_FUZZ_ORACLE_EVERY") ?? 500,
        CrasherDirectory = Environment.GetEnvironmentVariable("QCOWDEDUP_FUZZ_CRASHERS"),
    };

    /// <summary>
    /// Most bytes one step of a case (open/info/read, check, check -r all, writes) may allocate:
    /// 64 MiB for caches, buffers and the write pages of the fuzz storage, plus 64 times the
    /// image's bytes, plus 16 times the L1 tables the header and snapshot table declare, each at
    /// most QEMU's 32 MiB limit. The file factor is the report: every damaged 8-byte entry in the
    /// file may earn a few lines of text (as in qemu-img), and a repair checks twice. The L1 term
    /// is what QEMU allocates too whatever the file size (it reads every L1 table whole); we keep
    /// several copies across the passes of a repair (fewer is issue 11's). A step over it
    /// allocates in proportion to something an attacker chose that neither the file nor QEMU's
    /// limits back (a size, a count, a sparse file length).
    /// </summary>
    public static long AllocationCap(byte[] image) => (64L << 20) + (64L * image.Length) + (16 * DeclaredL1Bytes(image));

    /// <summary>Bytes of the active and snapshot L1 tables the image declares, each capped at QEMU's maximum.</summary>
    public static long DeclaredL1Bytes(byte[] image)
    {
        const long MaxL1Bytes = 32L << 20;
        if (image.Length < 72)
        {
            return 0;
        }

        var span = image.AsSpan();
        var total = Math.Min(MaxL1Bytes, BinaryPrimitives.ReadUInt32BigEndian(span[36..]) * 8L);
        var count = BinaryPrimitives.ReadUInt32BigEndian(span[60..]);
        var position = BinaryPrimitives.ReadUInt64BigEndian(span[64..]);
        for (var i = 0; i < Math.Min(count, 1024u) && position <= (ulong)image.Length - 40; i++)
        {
            var entry = span[(int)position..];
            total += Math.Min(MaxL1Bytes, BinaryPrimitives.ReadUInt32BigEndian(entry[8..]) * 8L);
            var length = 40UL + BinaryPrimitives.ReadUInt32BigEndian(entry[36..]) + BinaryPrimitives.ReadUInt16BigEndian(entry[12..]) + BinaryPrimitives.ReadUInt16BigEndian(entry[14..]);
            position += (length + 7) & ~7UL;
        }

        return total;
    }

    private static int? Int(string name) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : null;
}

/// <summary>
/// Runs fuzz cases, one per core at a time, each on a fresh thread under a watchdog, counts what went
/// wrong, saves every crasher (image, claimed length, mutations, exception) for a fixture, and
/// replays every Nth case's writes with qemu-io on a twin copy as the oracle for damaging writes.
/// </summary>
internal sealed class FuzzCampaign(FuzzSettings settings)
{
    private readonly FuzzReport _report = new();

    public FuzzReport Run()
    {
        var seeds = FuzzSeeds.Seeds;
        var layouts = seeds.ToDictionary(s => s.Name, s => new ImageLayout(s.Image));
        var weighted = seeds.SelectMany(s => Enumerable.Repeat(s, s.Weight)).ToArray();
        var clock = Stopwatch.StartNew();
        // Cases are independent and in memory: one worker per core (the CI machine has two).
        Parallel.For(0, settings.Cases, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, i => RunCase(i, weighted, layouts));

        _report.Elapsed = clock.Elapsed;
        return _report;
    }

    private void RunCase(int i, FuzzSeed[] weighted, Dictionary<string, ImageLayout> layouts)
    {
        var caseSeed = unchecked((settings.Seed * 1_000_003) + i);
        var random = new Random(caseSeed);
        var seed = weighted[random.Next(weighted.Length)];
        var input = new Mutator(random).Mutate(seed, layouts[seed.Name]);
        var (result, hung) = RunGuarded(input, seed, caseSeed);
        var id = $"{seed.Name}.{(uint)caseSeed:x8}";
        lock (_report)
        {
            _report.Cases++;
            if (hung)
            {
                _report.Hangs++;
                Record(id, input, $"hang (over {settings.CaseTimeout.TotalSeconds} s)");
                return;
            }

            foreach (var (step, error) in result!.Undocumented)
            {
                var type = error.GetType().Name;
                _report.ExceptionsByType[type] = _report.ExceptionsByType.GetValueOrDefault(type) + 1;
                Record(id, input, $"{step}: {error}");
            }

            _report.MaxAllocated = Math.Max(_report.MaxAllocated, result.LargestStep);
            if (result.LargestStep > FuzzSettings.AllocationCap(input.Image))
            {
                _report.OverCap++;
                Record(id, input, $"allocated {result.AllocatedBytes >> 20} MiB, cap per step {FuzzSettings.AllocationCap(input.Image) >> 20} MiB ({string.Join(", ", result.AllocatedBySteps.Select(s => $"{s.Key} {s.Value >> 20} MiB"))})");
            }
        }

        if (settings.OracleEvery > 0 && i % settings.OracleEvery == 0)
        {
            Oracle(id, input, seed, result);
        }
    }

    /// <summary>Runs one case to its end, or gives up on it after the timeout (the thread is left behind).</summary>
    public (FuzzCaseResult? Result, bool Hung) RunGuarded(FuzzInput input, FuzzSeed seed, int writeSeed)
    {
        FuzzCaseResult? result = null;
        Exception? escaped = null;
        var thread = new Thread(() =>
        {
            try
            {
                result = FuzzCase.Run(input, seed, writeSeed);
            }
            catch (Exception error)
            {
                escaped = error;
            }
        }, 16 << 20) { IsBackground = true, Name = "fuzz case" };
        thread.Start();
        if (!thread.Join(settings.CaseTimeout))
        {
            return (null, true);
        }

        if (escaped is not null)
        {
            result = new FuzzCaseResult();
            result.Undocumented.Add(("runner", escaped));
        }

        return (result, false);
    }

    private void Record(string id, FuzzInput input, string what)
    {
        _report.Findings.Add($"{id} [{string.Join("; ", input.Mutations)}] {what.Split('\n')[0]}");
        if (settings.CrasherDirectory is not { } directory)
        {
            return;
        }

        Directory.CreateDirectory(directory);
        FuzzFixtures.Save(directory, id, input);
        File.AppendAllText(Path.Combine(directory, id + ".txt"), $"mutations: {string.Join("; ", input.Mutations)}\n{what}\n\n");
    }

    /// <summary>
    /// The twin oracle: the same writes on two copies of the mutated image, ours in process and
    /// qemu-io's; qemu-img check must not find more corruption in ours than in QEMU's, nor be
    /// unable to open ours where it opens QEMU's.
    /// </summary>
    private void Oracle(string id, FuzzInput input, FuzzSeed seed, FuzzCaseResult result)
    {
        if (result.Written is not { } written || input.Length > input.Image.Length + (64L << 20) || written.Length > 256L << 20)
        {
            return; // a huge sparse file cannot be handed to qemu cheaply
        }

        var root = Path.Combine(Path.GetTempPath(), "qcowdedup-fuzz-oracle", $"{id}-{Environment.ProcessId}");
        try
        {
            var ours = Twin(root, "ours", seed, written.Snapshot((int)written.Length), result.WrittenFiles?.Opened);
            var theirs = Twin(root, "qemu", seed, FuzzFixtures.Materialize(input), null);
            if (result.Writes.Count > 0)
            {
                var args = new List<string> { "-f", "qcow2" };
                foreach (var write in result.Writes)
                {
                    args.AddRange(["-c", write.QemuIoCommand]);
                }

                Qemu.WorkingDirectory.Value = Path.GetDirectoryName(theirs);
                Qemu.Run("qemu-io", [.. args, theirs]);
            }

            var ourCheck = QemuCheck(ours);
            var theirCheck = QemuCheck(theirs);
            lock (_report)
            {
                _report.OracleChecks++;
                if (ourCheck.Corruptions > theirCheck.Corruptions || (theirCheck.Opened && !ourCheck.Opened))
                {
                    _report.OracleDisagreements++;
                    Record(id, input, $"oracle: after our writes qemu-img check says {ourCheck}, after qemu-io's {theirCheck}; writes {string.Join(", ", result.Writes.Select(w => w.QemuIoCommand))}");
                }
            }
        }
        finally
        {
            Qemu.WorkingDirectory.Value = null;
            if (Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    private static string Twin(string root, string name, FuzzSeed seed, byte[] image, Dictionary<string, FuzzStorage>? written)
    {
        var directory = Path.Combine(root, name);
        Directory.CreateDirectory(directory);
        foreach (var (file, bytes) in seed.Sidecars)
        {
            var content = written?.TryGetValue(file, out var storage) == true ? storage.Snapshot((int)storage.Length) : bytes;
            File.WriteAllBytes(Path.Combine(directory, file), content);
        }

        var path = Path.Combine(directory, "image.qcow2");
        File.WriteAllBytes(path, image);
        return path;
    }

    private static QemuCheckResult QemuCheck(string image)
    {
        Qemu.WorkingDirectory.Value = Path.GetDirectoryName(image);
        var result = Qemu.Run("qemu-img", ["check", "-f", "qcow2", "--output=json", image]);
        if (result.Output.Trim().Length == 0)
        {
            return new QemuCheckResult(false, 0, result.Error.Trim());
        }

        using var json = JsonDocument.Parse(result.Output);
        var corruptions = json.RootElement.TryGetProperty("corruptions", out var value) ? value.GetInt32() : 0;
        return new QemuCheckResult(true, corruptions, $"exit {result.ExitCode}");
    }

    private readonly record struct QemuCheckResult(bool Opened, int Corruptions, string Note)
    {
        public override string ToString() => Opened ? $"{Corruptions} corruptions ({Note})" : $"cannot open ({Note})";
    }
}

/// <summary>Crasher files: the mutated image (gzip when over 256 KiB) and, when the file claims another length, that length.</summary>
internal static class FuzzFixtures
{
    public static string RepositoryDirectory
    {
        get
        {
            var directory = new DirectoryInfo(AppContext.BaseDirectory);
            while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "QcowDedup.sln")))
            {
                directory = directory.Parent;
            }

            return Path.Combine(directory?.FullName ?? throw new DirectoryNotFoundException("repository root"), "testdata", "fuzz");
        }
    }

    /// <summary>The image as a file of its claimed length would hold it (sparse tails excluded).</summary>
    public static byte[] Materialize(FuzzInput input) =>
        input.Length <= input.Image.Length ? input.Image[..(int)input.Length] : [.. input.Image, .. new byte[input.Length - input.Image.Length]];

    public static void Save(string directory, string id, FuzzInput input)
    {
        var path = Path.Combine(directory, id + ".qcow2");
        var bytes = input.Length < input.Image.Length ? input.Image[..(int)input.Length] : input.Image;
        if (bytes.Length > 256 << 10)
        {
            using var file = File.Create(path + ".gz");
            using var gzip = new GZipStream(file, CompressionLevel.SmallestSize);
            gzip.Write(bytes);
        }
        else
        {
            File.WriteAllBytes(path, bytes);
        }

        if (input.Length > input.Image.Length)
        {
            File.WriteAllText(Path.Combine(directory, id + ".length"), input.Length.ToString(CultureInfo.InvariantCulture));
        }
    }

    /// <summary>Loads a fixture saved by <see cref="Save"/>; the seed name is the part before the first dot.</summary>
    public static FuzzInput Load(string path)
    {
        var name = Path.GetFileName(path);
        var id = name[..name.IndexOf(".qcow2", StringComparison.Ordinal)];
        byte[] bytes;
        if (path.EndsWith(".gz", StringComparison.Ordinal))
        {
            using var file = File.OpenRead(path);
            using var gzip = new GZipStream(file, CompressionMode.Decompress);
            using var memory = new MemoryStream();
            gzip.CopyTo(memory);
            bytes = memory.ToArray();
        }
        else
        {
            bytes = File.ReadAllBytes(path);
        }

        var lengthFile = Path.Combine(Path.GetDirectoryName(path)!, id + ".length");
        var length = File.Exists(lengthFile) ? long.Parse(File.ReadAllText(lengthFile).Trim(), CultureInfo.InvariantCulture) : bytes.Length;
        return new FuzzInput(id[..id.IndexOf('.', StringComparison.Ordinal)], bytes, length, [$"fixture {name}"]);
    }
}
