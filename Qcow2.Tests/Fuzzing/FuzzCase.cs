using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>
/// The exceptions the library documents for images it cannot use (see Qcow2Image.Open's
/// &lt;exception&gt; docs and STYLE.md "Errors"): <see cref="InvalidDataException"/> for corrupt
/// images (built by Qcow2Corruption, naming structure, field and offset),
/// <see cref="NotSupportedException"/> for features not supported, <see cref="IOException"/>
/// (FileNotFoundException for a missing backing or data file, "disk full" from the fuzz storage)
/// and <see cref="UnauthorizedAccessException"/> (BackingFilePolicyException). Everything else —
/// IndexOutOfRange, Overflow, NullReference, ArgumentOutOfRange, InvalidCast, OutOfMemory — is a
/// bug the fuzzer reports.
/// </summary>
internal static class DocumentedExceptions
{
    public static bool IsDocumented(Exception error) =>
        error is InvalidDataException or NotSupportedException or IOException or UnauthorizedAccessException;
}

/// <summary>A write the case makes, as qemu-io would make it too (the twin oracle replays it).</summary>
internal readonly record struct FuzzWrite(long Offset, int Length, byte Pattern, bool Zero)
{
    public string QemuIoCommand => Zero ? $"write -z {Offset} {Length}" : $"write -P 0x{Pattern:x2} {Offset} {Length}";
}

/// <summary>What one case did: the undocumented exceptions it met, and the image its writes left.</summary>
internal sealed class FuzzCaseResult
{
    public List<(string Step, Exception Error)> Undocumented { get; } = [];

    public List<FuzzWrite> Writes { get; } = [];

    public FuzzStorage? Written { get; set; }

    public FuzzResolver? WrittenFiles { get; set; }

    public long AllocatedBytes { get; set; }

    /// <summary>Bytes each step allocated, to say where an over-cap case spent them.</summary>
    public Dictionary<string, long> AllocatedBySteps { get; } = [];

    /// <summary>Bytes allocated by the most demanding step.</summary>
    public long LargestStep => AllocatedBySteps.Values.DefaultIfEmpty(AllocatedBytes).Max();
}

/// <summary>
/// Opens, after mutation, the files an image names (backing file, data file) from the seed's
/// in-memory copies; anything else does not exist. Writable opens get a private copy.
/// </summary>
internal sealed class FuzzResolver(IReadOnlyDictionary<string, byte[]> sidecars) : IBackingFileResolver
{
    public Dictionary<string, FuzzStorage> Opened { get; } = [];

    public IStorage Open(FileReference reference)
    {
        var name = Path.GetFileName(reference.Name);
        if (!sidecars.TryGetValue(name, out var bytes))
        {
            throw new FileNotFoundException($"fuzz: no file '{reference.Name}'", reference.Name);
        }

        var storage = new FuzzStorage(bytes, bytes.Length, reference.Writable, "/fuzz/" + name);
        if (reference.Writable)
        {
            Opened[name] = storage;
        }

        return storage;
    }
}

/// <summary>
/// One fuzz case as the acceptance list orders it: open -> info -> check -> read all -> check
/// -r all on a copy -> a few writes on another copy. Each step runs even when an earlier one
/// refused the image, so every step sees every input. A documented exception is a refusal; any
/// other is recorded.
/// </summary>
internal static class FuzzCase
{
    /// <summary>Guest bytes a case reads at most: a mutated size must not turn "read all" into a hang.</summary>
    public const long ReadLimit = 16L << 20;

    private const string ImagePath = "/fuzz/image.qcow2";

    public static FuzzCaseResult Run(FuzzInput input, FuzzSeed seed, int writeSeed)
    {
        var result = new FuzzCaseResult();
        var before = GC.GetAllocatedBytesForCurrentThread();
        Step(result, "open/info/read", () => OpenInfoRead(input, seed));
        Step(result, "check", () =>
        {
            using var image = Open(input, seed, writable: false, repair: true, new FuzzResolver(seed.Sidecars));
            image.Check();
        });
        Step(result, "check -r all", () =>
        {
            using var image = Open(input, seed, writable: true, repair: true, new FuzzResolver(seed.Sidecars));
            var repaired = image.Check(CheckRepair.All);
            if (repaired.Failure is null && (repaired.CorruptionsFixed > 0 || repaired.LeaksFixed > 0))
            {
                image.Check(); // the double check qemu-img and our CLI make after a repair
            }
        });
        var resolver = new FuzzResolver(seed.Sidecars);
        var storage = new FuzzStorage(input.Image, input.Length, writable: true, ImagePath);
        result.Written = storage;
        result.WrittenFiles = resolver;
        Step(result, "write", () =>
        {
            using var image = Qcow2Image.Open(storage, Options(seed, writable: true, repair: false, resolver), leaveOpen: true);
            var random = new Random(writeSeed);
            foreach (var write in PlanWrites(random, image.Size, image.Info.ClusterSize))
            {
                result.Writes.Add(write);
                if (write.Zero)
                {
                    image.WriteZeroes(write.Offset, write.Length);
                }
                else
                {
                    var bytes = new byte[write.Length];
                    Array.Fill(bytes, write.Pattern);
                    image.Write(write.Offset, bytes);
                }
            }

            image.Flush();
        });
        result.AllocatedBytes = GC.GetAllocatedBytesForCurrentThread() - before;
        return result;
    }

    private static void OpenInfoRead(FuzzInput input, FuzzSeed seed)
    {
        using var image = Open(input, seed, writable: false, repair: false, new FuzzResolver(seed.Sidecars));
        _ = image.Info;
        _ = image.Snapshots.Count + image.Bitmaps.Count + image.BackingChain.Count;
        var buffer = new byte[1 << 20];
        var size = image.Size;
        long read = 0;
        for (long offset = 0; offset < size && read < ReadLimit; offset += buffer.Length)
        {
            var count = (int)Math.Min(buffer.Length, size - offset);
            image.Read(offset, buffer.AsSpan(0, count));
            read += count;
        }

        // Then the data past the sequential part, as far as the limit allows.
        foreach (var extent in image.GetExtents(0, size))
        {
            if (extent.Kind != ExtentKind.Allocated || extent.End <= read || read >= 2 * ReadLimit)
            {
                continue;
            }

            var start = Math.Max(extent.Start, Math.Min(size, ReadLimit));
            var count = (int)Math.Min(Math.Min(buffer.Length, extent.End - start), (2 * ReadLimit) - read);
            if (count > 0)
            {
                image.Read(start, buffer.AsSpan(0, count));
                read += count;
            }
        }

        foreach (var snapshot in image.Snapshots.Take(4))
        {
            using var view = image.OpenSnapshot(snapshot.Id, SnapshotLookup.Id);
            view.Read(0, buffer.AsSpan(0, (int)Math.Min(buffer.Length, view.Size)));
        }
    }

    /// <summary>Two identical full clusters (a dedup hit), a partial write, and a zeroed cluster.</summary>
    public static List<FuzzWrite> PlanWrites(Random random, long size, int clusterSize)
    {
        var writes = new List<FuzzWrite>();
        var span = Math.Min(size, 8L << 20);
        if (span <= 0)
        {
            return writes;
        }

        var cluster = (int)Math.Clamp(clusterSize, 512, 2 << 20);
        var pattern = (byte)random.Next(1, 256);
        var clusters = Math.Max(span / cluster, 1);
        foreach (var _ in new[] { 0, 1 })
        {
            var offset = random.NextInt64(clusters) * cluster;
            writes.Add(new FuzzWrite(offset, (int)Math.Min(cluster, size - offset), pattern, Zero: false));
        }

        var partial = random.NextInt64(span);
        writes.Add(new FuzzWrite(partial, (int)Math.Min(random.Next(1, 3 * cluster), size - partial), (byte)random.Next(1, 256), Zero: false));
        var zero = random.NextInt64(clusters) * cluster;
        writes.Add(new FuzzWrite(zero, (int)Math.Min(cluster, size - zero), 0, Zero: true));
        return writes;
    }

    private static Qcow2Image Open(FuzzInput input, FuzzSeed seed, bool writable, bool repair, FuzzResolver resolver) =>
        Qcow2Image.Open(new FuzzStorage(input.Image, input.Length, writable, ImagePath), Options(seed, writable, repair, resolver));

    private static Qcow2OpenOptions Options(FuzzSeed seed, bool writable, bool repair, FuzzResolver resolver)
    {
        var options = new Qcow2OpenOptions
        {
            Writable = writable,
            ForRepair = repair,
            Locking = FileLocking.Off,
            BackingResolver = resolver,
        };
        return seed.Dedup ? options.WithDedup() : options;
    }

    private static void Step(FuzzCaseResult result, string step, Action action)
    {
        var before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            action();
        }
        catch (Exception error) when (DocumentedExceptions.IsDocumented(error))
        {
            // A refusal naming what is wrong: what the library promises for bad input.
        }
        catch (Exception error)
        {
            result.Undocumented.Add((step, error));
        }
        finally
        {
            result.AllocatedBySteps[step] = GC.GetAllocatedBytesForCurrentThread() - before;
        }
    }
}
