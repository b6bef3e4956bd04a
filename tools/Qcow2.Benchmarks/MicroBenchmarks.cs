using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using QcowDedup.Qcow2.Compression;
using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Dedup.Journal;
using QcowDedup.Qcow2.Dedup.Stores;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Benchmarks;

/// <summary>
/// BenchmarkDotNet measurements of the hot per-cluster operations: the codecs, SHA-256 and the
/// zero scan, and the dedup index's table operations. Run with
/// <c>dotnet run -c Release --project tools/Qcow2.Benchmarks -- micro [BenchmarkDotNet arguments]</c>
/// (for instance <c>--filter *Codec*</c>); results go to the console and to BenchmarkDotNet.Artifacts.
/// </summary>
internal static class MicroBenchmarks
{
    public static int Run(string[] args)
    {
        // In process: no generated project to restore and build, so it runs wherever the tool was built.
        var config = ManualConfig.CreateEmpty()
            .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance))
            .AddColumnProvider(DefaultColumnProviders.Instance)
            .AddLogger(BenchmarkDotNet.Loggers.ConsoleLogger.Default)
            .AddExporter(MarkdownExporter.GitHub)
            .AddDiagnoser(BenchmarkDotNet.Diagnosers.MemoryDiagnoser.Default);
        var summaries = BenchmarkSwitcher.FromTypes([typeof(CodecBenchmarks), typeof(ClusterScanBenchmarks), typeof(LogStoreBenchmarks), typeof(IncarnationBenchmarks)])
            .Run(args.Length == 0 ? ["--filter", "*"] : args, config);
        return summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success)) ? 1 : 0;
    }

    /// <summary>A 64 KiB cluster like the bench's mixed input: per 10 parts, 3 zeros, 3 text, 4 random.</summary>
    internal static byte[] MixedCluster(int size, int seed)
    {
        var cluster = new byte[size];
        var random = new Random(seed);
        var text = "qcow2 clusters hold guest data; the L2 table maps each guest cluster to a host cluster.\n"u8;
        var part = size / 10;
        for (var i = 3 * part; i < 6 * part; i++)
        {
            cluster[i] = text[i % text.Length];
        }

        random.NextBytes(cluster.AsSpan(6 * part));
        return cluster;
    }
}

/// <summary>Compressing and decompressing one 64 KiB cluster of mixed content (what convert -c does per cluster).</summary>
public class CodecBenchmarks
{
    private readonly byte[] _cluster = MicroBenchmarks.MixedCluster(65536, 7);
    private readonly byte[] _compressed = new byte[65536];
    private readonly byte[] _output = new byte[65536];
    private int _compressedLength;

    [Params(CompressionType.Deflate, CompressionType.Zstd)]
    public CompressionType Codec { get; set; }

    [GlobalSetup]
    public void Setup() => _compressedLength = ClusterCompression.Compress(Codec, _cluster, _compressed);

    [Benchmark]
    public int Compress() => ClusterCompression.Compress(Codec, _cluster, _compressed);

    [Benchmark]
    public byte Decompress()
    {
        ClusterCompression.Decompress(Codec, _compressed.AsSpan(0, _compressedLength), _output, hostOffset: 0);
        return _output[^1];
    }
}

/// <summary>What every cluster written costs before any I/O: the zero scan and, with dedup, SHA-256.</summary>
public class ClusterScanBenchmarks
{
    private byte[] _cluster = [];

    [Params(4096, 65536)]
    public int ClusterSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _cluster = new byte[ClusterSize];
        _cluster[^1] = 1; // the scan reads the whole cluster before it finds a non-zero byte
    }

    [Benchmark]
    public bool ZeroScan() => _cluster.AsSpan().ContainsAnyExcept((byte)0);

    [Benchmark]
    public ulong Sha256() => ClusterHash.Compute(_cluster).Word0;
}

/// <summary>The dedup log store (cuckoo table, 2^14 buckets of 4 slots) filled to 90%: lookups, and inserts up to that fill.</summary>
public class LogStoreBenchmarks
{
    private const int Order = 14;
    private const int Filled = (int)((1 << Order) * LogStore.SlotsPerBucket * 0.9);
    private IndexEntry[] _entries = [];
    private ClusterHash[] _absent = [];
    private LogStore _store = null!;
    private int _next;

    [GlobalSetup]
    public void Setup()
    {
        _entries = [.. Enumerable.Range(1, Filled).Select(i => new IndexEntry(Hash(i), (long)i << 16, (long)i << 16, i, 1))];
        _absent = [.. Enumerable.Range(Filled + 1, 4096).Select(Hash)];
        _store = Fill();
    }

    [Benchmark(OperationsPerInvoke = Filled)]
    public int InsertToNinetyPercent() => Fill().Count;

    [Benchmark]
    public bool LookupHit() => _store.TryGet(_entries[_next++ % _entries.Length].Hash, out _);

    [Benchmark]
    public bool LookupMiss() => _store.TryGet(_absent[_next++ % _absent.Length], out _);

    internal static ClusterHash Hash(int i) => ClusterHash.Compute(BitConverter.GetBytes(i));

    private LogStore Fill()
    {
        var store = new LogStore(Order, seed: 3);
        foreach (var entry in _entries)
        {
            store.Insert(entry);
        }

        return store;
    }
}

/// <summary>A frozen log store (incarnation) on an in-memory device: a hit costs a filter probe and one block read, a miss the probe only.</summary>
public class IncarnationBenchmarks
{
    private const int Order = 14;
    private readonly MemoryDevice _device = new(Incarnation.AreaBytes(Order));
    private readonly IndexEntry[] _found = new IndexEntry[Incarnation.MaxMatches];
    private ClusterHash[] _present = [];
    private ClusterHash[] _absent = [];
    private Incarnation _incarnation = null!;
    private int _next;

    [GlobalSetup]
    public void Setup()
    {
        var store = new LogStore(Order, seed: 3);
        var count = (int)((1 << Order) * LogStore.SlotsPerBucket * 0.9);
        _present = [.. Enumerable.Range(1, count).Select(LogStoreBenchmarks.Hash)];
        _absent = [.. Enumerable.Range(count + 1, 4096).Select(LogStoreBenchmarks.Hash)];
        for (var i = 0; i < _present.Length; i++)
        {
            store.Insert(new IndexEntry(_present[i], (long)(i + 1) << 16, (long)(i + 1) << 16, i, 1));
        }

        _incarnation = Incarnation.Freeze(store, generation: 1, offset: 0, _device);
    }

    [Benchmark]
    public int LookupHit() => _incarnation.Lookup(_present[_next++ % _present.Length], _device, _found, out _);

    [Benchmark]
    public int LookupMiss() => _incarnation.Lookup(_absent[_next++ % _absent.Length], _device, _found, out _);

    private sealed class MemoryDevice(long size) : IIndexDevice
    {
        private readonly byte[] _bytes = new byte[size];

        public void Read(long offset, Span<byte> buffer) => _bytes.AsSpan((int)offset, buffer.Length).CopyTo(buffer);

        public void Write(long offset, ReadOnlySpan<byte> buffer) => buffer.CopyTo(_bytes.AsSpan((int)offset));
    }
}
