using System.Diagnostics;
using QcowDedup.Cli;
using QcowDedup.Qcow2.Compression;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Portability;

/// <summary>
/// Issue 12, acceptance 6: zstd images read and write with no system libzstd (ZstdSharp serves), and
/// deflate clusters are written with no system zlib (the .NET runtime's own zlib serves). The system
/// libraries are hidden from a child process (QCOWDEDUP_ZSTD=managed, QCOWDEDUP_ZLIB=runtime), and
/// the dynamic loader's own log (LD_DEBUG) shows they were never loaded; a control run shows the log
/// would have caught them.
/// </summary>
[TestFixture]
public sealed class CodecFallbackTests : TempDirectoryFixture
{
    private static readonly TimeSpan Patience = TimeSpan.FromMinutes(2);

    private string _source = string.Empty;

    [SetUp]
    public void MakeSource()
    {
        _source = PathOf("src.qcow2");
        Qemu.Img("create", "-f", "qcow2", _source, "8M");
        Qemu.Io(_source, "write -P 0x61 0 1M", "write -P 0x33 3M 192k", "write -P 0x07 7M 64k");
        // Text-like clusters compress; random ones stay plain, as qemu-img keeps them.
        var random = new byte[128 << 10];
        new Random(4).NextBytes(random);
        using var image = Image.Qcow2Image.Open(_source, new Image.Qcow2OpenOptions { Writable = true });
        image.Write(5 << 20, random);
    }

    [Test]
    public void Zstd_images_read_and_write_without_the_system_libzstd()
    {
        var qemuMade = PathOf("qemu-zstd.qcow2");
        Qemu.Img("convert", "-f", "qcow2", "-O", "qcow2", "-c", "-o", "compression_type=zstd", _source, qemuMade);

        var read = Run("QCOWDEDUP_ZSTD", "managed", "convert", "-O", "raw", qemuMade, PathOf("read.raw"));
        read.Libraries.ShouldNotContain("libzstd");
        Qemu.Compare(_source, PathOf("read.raw")).ExitCode.ShouldBe(0);

        var ours = PathOf("ours-zstd.qcow2");
        var write = Run("QCOWDEDUP_ZSTD", "managed", "convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd", _source, ours);
        write.Libraries.ShouldNotContain("libzstd");
        Qemu.AssertClean(ours);
        Qemu.Compare(_source, ours, "qcow2", "qcow2").ExitCode.ShouldBe(0);
        Qemu.Img("check", "--output=json", ours).ShouldNotContain("\"compressed-clusters\": 0,");

        // Control: the same run with the library visible loads it, so the log above would have shown it.
        Run(null, null, "convert", "-O", "raw", qemuMade, PathOf("control.raw")).Libraries.ShouldContain("libzstd");
    }

    [Test]
    public void Deflate_clusters_are_written_without_the_system_zlib()
    {
        var ours = PathOf("ours-zlib.qcow2");
        var write = Run("QCOWDEDUP_ZLIB", "runtime", "convert", "-O", "qcow2", "-c", _source, ours);
        write.Libraries.ShouldNotContain("libz.so");
        Qemu.AssertClean(ours);
        Qemu.Compare(_source, ours, "qcow2", "qcow2").ExitCode.ShouldBe(0);
        Qemu.Img("check", "--output=json", ours).ShouldNotContain("\"compressed-clusters\": 0,");

        Run(null, null, "convert", "-O", "qcow2", "-c", _source, PathOf("control.qcow2")).Libraries.ShouldContain("libz.so");
    }

    /// <summary>Both implementations of each codec read what the other wrote, cluster by cluster.</summary>
    [Test]
    public void The_fallbacks_and_the_system_libraries_understand_each_other()
    {
        Zstd.UsesSystemLibrary.ShouldBeTrue("this test runs where libzstd is installed (tools/test.sh installs it)");
        Zlib.UsesSystemLibrary.ShouldBeTrue();
        var clusters = new[] { Text(65536), Text(4096), Mixed(65536) };
        foreach (var cluster in clusters)
        {
            foreach (var (writer, reader) in new[] { (true, false), (false, true), (true, true) })
            {
                var packed = new byte[cluster.Length];
                var length = Zstd.Compress(cluster, packed, managed: writer);
                length.ShouldBeGreaterThan(0);
                var unpacked = new byte[cluster.Length];
                // QEMU's compressed range runs to the sector: trailing bytes after the frame must be ignored.
                var withTail = packed.AsSpan(0, Math.Min(packed.Length, length + 300)).ToArray();
                Zstd.TryDecompress(withTail, unpacked, managed: reader).ShouldBeTrue();
                unpacked.ShouldBe(cluster);
                Zstd.TryDecompress(packed.AsSpan(0, length - 1), unpacked, managed: reader).ShouldBeFalse("a cut frame");
            }

            var deflated = new byte[cluster.Length];
            var size = Zlib.Compress(cluster, deflated, runtime: true);
            size.ShouldBeGreaterThan(0);
            var inflated = new byte[cluster.Length];
            ClusterCompression.Decompress(CompressionType.Deflate, deflated.AsSpan(0, size), inflated, hostOffset: 0);
            inflated.ShouldBe(cluster);
        }

        var random = new byte[65536];
        new Random(9).NextBytes(random);
        Zstd.Compress(random, new byte[65535], managed: true).ShouldBe(-1);
        Zlib.Compress(random, new byte[65535], runtime: true).ShouldBe(-1);
    }

    /// <summary>
    /// QEMU inflates with a 4 KiB window; a deflater with a larger one emits back-references QEMU
    /// cannot follow, yet qemu-img's tests here would not notice (its whole-cluster inflate reaches
    /// back anyway). zlib itself judges: Python's zlib with wbits −12 refuses a reference too far back.
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void Deflated_clusters_reach_back_at_most_4_KiB(bool runtime)
    {
        // Text that compresses within any window, and one random 8 KiB block twice, 16 KiB apart: a
        // 32 KiB window would copy the second by reference; a 4 KiB one must store it again.
        var cluster = Text(65536);
        var block = new byte[8 << 10];
        new Random(6).NextBytes(block);
        block.CopyTo(cluster, 16 << 10);
        block.CopyTo(cluster, 32 << 10);

        var packed = new byte[cluster.Length];
        var length = Zlib.Compress(cluster, packed, runtime);
        length.ShouldBeGreaterThan(0);
        var input = PathOf("packed.bin");
        File.WriteAllBytes(input, packed[..length]);
        var check = Qemu.Run("python3", ["-c", "import sys, zlib; d = zlib.decompressobj(-12).decompress(open(sys.argv[1], 'rb').read()); print(len(d))", input]);
        check.ExitCode.ShouldBe(0, check.Error);
        check.Output.Trim().ShouldBe("65536");
    }

    private static byte[] Text(int size) => [.. Enumerable.Range(0, size).Select(i => (byte)"qcow2 portable text "[i % 20])];

    private static byte[] Mixed(int size)
    {
        var cluster = Text(size);
        new Random(5).NextBytes(cluster.AsSpan(size / 4, size / 4));
        return cluster;
    }

    private sealed record Outcome(string Libraries);

    /// <summary>Runs "dotnet qcow2.dll ARGS" with one variable set, returning the libraries the loader opened.</summary>
    private Outcome Run(string? variable, string? value, params string[] args)
    {
        var log = PathOf($"ld-{Guid.NewGuid():N}");
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        var start = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(typeof(Program).Assembly.Location);
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment.Remove("QCOWDEDUP_ZSTD");
        start.Environment.Remove("QCOWDEDUP_ZLIB");
        if (variable is not null)
        {
            start.Environment[variable] = value;
        }

        start.Environment["LD_DEBUG"] = "libs";
        start.Environment["LD_DEBUG_OUTPUT"] = log;
        using var process = Process.Start(start) ?? throw new InvalidOperationException("Could not start dotnet.");
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEndAsync();
        if (!process.WaitForExit(Patience))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"qcow2 {string.Join(' ', args)} did not finish within {Patience}.");
        }

        process.ExitCode.ShouldBe(0, output.Result + error.Result);
        var loaded = string.Join('\n', System.IO.Directory.GetFiles(Directory, Path.GetFileName(log) + "*")
            .SelectMany(File.ReadLines)
            .Where(line => line.Contains("calling init:", StringComparison.Ordinal)));
        loaded.ShouldNotBeEmpty("LD_DEBUG=libs logs every library the loader initialises");
        return new Outcome(loaded);
    }
}
