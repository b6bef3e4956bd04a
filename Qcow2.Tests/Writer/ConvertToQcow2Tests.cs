using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>Issue 3, acceptance 4: convert -O qcow2, plain and compressed, of a mixed raw image.</summary>
[TestFixture]
[Category("Interop")]
public class ConvertToQcow2Tests : TempDirectoryFixture
{
    private string _raw = string.Empty;

    [SetUp]
    public void MakeMixedRaw()
    {
        // Random data, zero runs, repeated blocks and text, with an odd tail.
        var random = new Random(5);
        var content = new byte[(12 << 20) + 4096];
        random.NextBytes(content.AsSpan(0, 3 << 20));
        var block = new byte[64 * 1024];
        random.NextBytes(block);
        for (var i = 0; i < 16; i++)
        {
            block.CopyTo(content, (5 << 20) + (i * block.Length));
        }

        var text = "the same sentence again and again. "u8.ToArray();
        for (var at = 8 << 20; at + text.Length < 10 << 20; at += text.Length)
        {
            text.CopyTo(content, at);
        }

        random.NextBytes(content.AsSpan(content.Length - 4096));
        _raw = PathOf("mixed.raw");
        File.WriteAllBytes(_raw, content);
    }

    [Test]
    public void Plain_zlib_and_zstd_conversions_compare_identical_check_clean_and_compression_shrinks()
    {
        var sizes = new Dictionary<string, long>();
        foreach (var (name, args) in new[]
        {
            ("plain", new[] { "convert", "-O", "qcow2" }),
            ("zlib", new[] { "convert", "-c", "-O", "qcow2" }),
            ("zstd", new[] { "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd" }),
        })
        {
            var target = PathOf($"{name}.qcow2");
            var cli = CliRunner.Run([.. args, _raw, target]);
            cli.ExitCode.ShouldBe(0, cli.Error);
            Qemu.Compare(target, _raw).ExitCode.ShouldBe(0, name);
            Qemu.AssertClean(target);
            sizes[name] = new FileInfo(target).Length;
        }

        sizes["zlib"].ShouldBeLessThan(sizes["plain"]);
        sizes["zstd"].ShouldBeLessThan(sizes["plain"]);
        using var zstd = Qcow2Image.Open(PathOf("zstd.qcow2"));
        zstd.Info.CompressionType.ShouldBe(QcowDedup.Qcow2.Format.CompressionType.Zstd);
        zstd.Check().CompressedClusters.ShouldBeGreaterThan(0);
    }

    [Test]
    public void Zero_clusters_are_left_unallocated_and_incompressible_clusters_stored_plain()
    {
        var target = PathOf("c.qcow2");
        CliRunner.Run("convert", "-c", "-O", "qcow2", _raw, target).ExitCode.ShouldBe(0);
        using var image = Qcow2Image.Open(target);
        var extents = image.GetExtents(0, image.Size);
        extents.ShouldContain(e => e.Kind == ExtentKind.Unallocated && e.Start <= (3 << 20) && e.End >= (5 << 20));
        extents.ShouldContain(e => e.Kind == ExtentKind.Allocated && !e.IsCompressed && e.Start < (3 << 20));
        extents.ShouldContain(e => e.Kind == ExtentKind.Allocated && e.IsCompressed);
    }

    [Test]
    public void Converting_a_qcow2_chain_flattens_it()
    {
        var basePath = PathOf("base.qcow2");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", _raw, basePath);
        var overlay = PathOf("overlay.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay);
        Qemu.Io(overlay, "write -P 0x77 1M 64k");
        var flat = PathOf("flat.qcow2");
        CliRunner.Run("convert", "-O", "qcow2", overlay, flat).ExitCode.ShouldBe(0);
        Qemu.Compare(flat, overlay, "qcow2", "qcow2").ExitCode.ShouldBe(0);
        Qcow2Image.Open(flat).BackingChain.Count.ShouldBe(1);
    }

    [Test]
    public void Converting_onto_a_backing_file_hides_its_data_where_the_source_is_zero(
        [Values("1.1", "0.10")] string compat, [Values] bool compress, [Values] bool sourceIsQcow2)
    {
        // The backing file holds data everywhere the source has zeros, and where it has data too.
        var backing = PathOf("backing.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", $"compat={compat}", backing, "12M");
        Qemu.Io(backing, "write -P 0xbb 0 12M");
        var source = _raw;
        if (sourceIsQcow2)
        {
            source = PathOf("source.qcow2");
            Qemu.Img("convert", "-f", "raw", "-O", "qcow2", _raw, source);
            Qemu.Io(source, "write -z 9M 1M", "write -P 0xbb 11M 64k"); // explicit zeros, and data equal to the backing's
        }

        var target = PathOf("target.qcow2");
        string[] args = ["convert", .. compress ? new[] { "-c" } : [], "-O", "qcow2", "-o", $"compat={compat},backing_file=backing.qcow2,backing_fmt=qcow2", source, target];
        var cli = CliRunner.Run(args);
        cli.ExitCode.ShouldBe(0, cli.Error);

        var compare = Qemu.Compare(source, target, sourceIsQcow2 ? "qcow2" : "raw", "qcow2");
        compare.ExitCode.ShouldBe(0, compare.Output + compare.Error);
        Qemu.AssertClean(target);
        Qemu.Img("info", target).ShouldContain("backing file: backing.qcow2");
        if (sourceIsQcow2)
        {
            // Where the source holds the backing's own bytes, the backing may simply show through.
            using var image = Qcow2Image.Open(target);
            image.GetExtents(11 << 20, 64 << 10).ShouldHaveSingleItem().Kind.ShouldBe(ExtentKind.Backing);
        }
    }
}

/// <summary>Writes into compressed clusters decompress them into ordinary clusters.</summary>
[TestFixture]
[Category("Interop")]
public class CompressedClusterWriteTests : TempDirectoryFixture
{
    [TestCase("zlib", true)]
    [TestCase("zstd", true)]
    [TestCase("zlib", false)]
    public void Partial_writes_into_compressed_clusters_keep_the_rest_and_free_the_compressed_bytes(string compression, bool madeByQemu)
    {
        var raw = PathOf("source.raw");
        var content = new byte[4 << 20];
        for (var i = 0; i < content.Length; i++)
        {
            content[i] = (byte)(i / 1000 % 251);
        }

        File.WriteAllBytes(raw, content);
        var path = PathOf("compressed.qcow2");
        if (madeByQemu)
        {
            Qemu.Img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", $"compression_type={compression}", raw, path);
        }
        else
        {
            CliRunner.Run("convert", "-c", "-O", "qcow2", "-o", $"compression_type={compression}", raw, path).ExitCode.ShouldBe(0);
        }

        var model = new SparseModel(content.Length);
        model.Write(0, content);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Check().CompressedClusters.ShouldBeGreaterThan(10);
            var random = new Random(4);
            for (var i = 0; i < 40; i++)
            {
                var offset = random.NextInt64(0, content.Length - 5000);
                var data = new byte[random.Next(1, 5000)];
                random.NextBytes(data);
                image.Write(offset, data);
                model.Write(offset, data);
            }

            image.Discard(2 << 20, 1 << 20);
            model.Zero(2 << 20, 1 << 20);
        }

        Qemu.AssertClean(path);
        var expected = PathOf("expected.raw");
        model.WriteRaw(expected);
        Qemu.Compare(path, expected).ExitCode.ShouldBe(0);
    }
}
