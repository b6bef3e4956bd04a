using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>qcow2 measure prints what qemu-img measure prints, for sizes and for raw and qcow2 sources.</summary>
[TestFixture]
[Category("Interop")]
public class MeasureTests : TempDirectoryFixture
{
    private const long MiB = 1L << 20;

    /// <summary>Target options each matrix image is measured with: both output formats, odd cluster sizes, v2, a backing file.</summary>
    private static readonly string[][] TargetVariants =
    [
        [],
        ["-O", "qcow2"],
        ["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=64"],
        ["-O", "qcow2", "--output=json", "-o", "extended_l2=on,cluster_size=2M"],
        ["-O", "qcow2", "-o", "compat=0.10", "-o", "cluster_size=512"],
        ["-O", "qcow2", "-o", "backing_file=elsewhere.qcow2,preallocation=metadata"],
    ];

    [TestCase("1G")]
    [TestCase("1G", "-o", "cluster_size=4k")]
    [TestCase("1G", "-o", "cluster_size=2M")]
    [TestCase("1G", "-o", "refcount_bits=64")]
    [TestCase("1G", "-o", "refcount_bits=1,cluster_size=512")]
    [TestCase("1G", "-o", "preallocation=full")]
    [TestCase("1G", "-o", "preallocation=falloc")]
    [TestCase("1G", "-o", "extended_l2=on")]
    [TestCase("1G", "-o", "compat=0.10,lazy_refcounts=on")]
    [TestCase("1G", "--output=json")]
    [TestCase("2T", "-o", "cluster_size=2M,extended_l2=on", "--output", "json")]
    [TestCase("0")]
    [TestCase("1.5k")]
    public void Size_alone_gives_qemu_imgs_figures(string size, params string[] options)
    {
        AssertSameAsQemu(["-O", "qcow2", "--size", size, .. options]);
        AssertSameAsQemu(["--size", size]); // raw, qemu-img's default output format
    }

    [Test]
    public void Default_qcow2_figures_are_metadata_only_until_fully_allocated()
    {
        var ours = CliRunner.Run("measure", "-O", "qcow2", "--size", "1G");
        ours.ExitCode.ShouldBe(0, ours.Error);
        ours.Output.ShouldBe("required size: 393216\nfully allocated size: 1074135040\n");
    }

    [Test]
    public void Raw_source_counts_clusters_with_data_and_skips_holes()
    {
        var builder = new ImageBuilder(Directory);
        var raw = builder.CreateRaw("holes.raw", 10 * MiB);
        builder.IoRaw(raw, "write -P 1 0 4k", "write -P 2 3M 100k", "write -z 5M 1M", "write -P 3 9M 64k");
        foreach (var variant in TargetVariants)
        {
            AssertSameAsQemu([.. variant, raw]);
        }

        // At most 0–64k, 3M–3.1M (two clusters), 5M–6M (when the zero write allocated blocks) and 9M–9M+64k.
        var metadataOnly = Qcow2Image.Measure(new Qcow2CreateOptions { Size = 10 * MiB });
        using var source = DiskSource.Open(raw, "raw", new Qcow2OpenOptions());
        var ours = Qcow2Image.Measure(new Qcow2CreateOptions(), source.Size, source.GetMap(0, source.Size));
        ours.Required.ShouldBeInRange(metadataOnly.Required + (4 * 65536), metadataOnly.Required + (20 * 65536));
    }

    [TestCase(1000, false)]
    [TestCase(70000, true)]
    [TestCase(70000, false)]
    public void Raw_source_of_odd_length_reads_zeros_past_its_end(int length, bool dataAtStart)
    {
        var raw = PathOf("odd.raw");
        using (var file = File.Create(raw))
        {
            if (dataAtStart)
            {
                file.Write([1, 2, 3]);
            }

            file.SetLength(length);
        }

        AssertSameAsQemu(["-O", "qcow2", "-o", "cluster_size=512", raw]);
        AssertSameAsQemu(["-O", "qcow2", raw]);
        AssertSameAsQemu([raw]);
        CliRunner.Run("map", "--output=json", "-f", "raw", raw).Output.ShouldBe(Qemu.Img("map", "--output=json", "-f", "raw", raw));
    }

    [Test]
    public void Qcow2_source_skips_zero_clusters_and_counts_compressed_ones()
    {
        var builder = new ImageBuilder(Directory);
        var raw = builder.CreateRaw("source.raw", 16 * MiB);
        builder.IoRaw(raw, "write -P 0x11 0 1M", "write -P 0x22 4M 64k", "write -P 0x33 9M 3M");
        var image = builder.PathOf("compressed.qcow2");
        Qemu.Img("convert", "-c", "-f", "raw", "-O", "qcow2", raw, image);
        builder.Io(image, "write -z 256k 128k", "write -z -u 9M 1M", "write -P 0x44 14M 4k", "write -z 15M 64k");
        Qemu.ImgResult("map", "--output=json", image).Output.ShouldContain("\"zero\": true, \"data\": false");
        foreach (var variant in TargetVariants)
        {
            AssertSameAsQemu([.. variant, image]);
        }
    }

    [Test]
    public void Persistent_bitmaps_are_measured_for_a_v3_target_only()
    {
        var builder = new ImageBuilder(Directory);
        var image = builder.Create("bitmaps.qcow2", 64 * MiB);
        builder.Io(image, "write -P 1 0 64k");
        Qemu.Img("bitmap", "--add", image, "daily");
        Qemu.Img("bitmap", "--add", "-g", "512", image, "fine-grained-ü");

        var ours = CliRunner.Run("measure", "-O", "qcow2", image);
        // Per bitmap one cluster of bits and one of bitmap table, plus one directory cluster: 5 × 64 KiB.
        ours.Output.ShouldEndWith("bitmaps size: 327680\n");
        foreach (var variant in TargetVariants)
        {
            AssertSameAsQemu([.. variant, image]);
        }

        AssertSameAsQemu(["-O", "qcow2", "-o", "cluster_size=512", "--output", "json", image]);
    }

    [TestCaseSource(typeof(ReadMatrix), nameof(ReadMatrix.Cells))]
    public void Every_kind_of_qemu_made_image_measures_like_qemu_img(ReadCell cell)
    {
        var image = cell.Build(new ImageBuilder(Directory)).Path;
        foreach (var variant in TargetVariants)
        {
            AssertSameAsQemu([.. variant, image]);
        }
    }

    [Test]
    public void A_backing_file_option_makes_every_source_cluster_required()
    {
        var builder = new ImageBuilder(Directory);
        var image = builder.Create("sparse.qcow2", 32 * MiB);
        builder.Io(image, "write -P 1 0 4k");
        var ours = CliRunner.Run("measure", "-O", "qcow2", "-o", "backing_file=base.qcow2", image);
        ours.Output.ShouldStartWith("required size: 33882112\nfully allocated size: 33882112\n");
        AssertSameAsQemu(["-O", "qcow2", "-o", "backing_file=base.qcow2", image]);
    }

    [TestCase("Cluster size must be a power of two between 512 and 2048k", "-O", "qcow2", "-o", "cluster_size=3k", "--size", "1G")]
    [TestCase("Cluster size must be a power of two between 512 and 2048k", "-O", "qcow2", "-o", "cluster_size=4M", "--size", "1G")]
    [TestCase("at least 16384 bytes", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=4k", "--size", "1G")]
    [TestCase("require compatibility level 1.1 or above (use compat=1.1 or greater)", "-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1G")]
    [TestCase("Refcount width must be a power of two and may not exceed 64 bits", "-O", "qcow2", "-o", "refcount_bits=3", "--size", "1G")]
    [TestCase("Invalid compatibility level: '1.2'", "-O", "qcow2", "-o", "compat=1.2", "--size", "1G")]
    [TestCase("invalid parameter value: bogus", "-O", "qcow2", "-o", "preallocation=bogus", "--size", "1G")]
    [TestCase("'lazy_refcounts' expects 'on' or 'off'", "-O", "qcow2", "-o", "lazy_refcounts=maybe", "--size", "1G")]
    [TestCase("invalid parameter 'frobnicate'", "-O", "qcow2", "-o", "frobnicate=on", "--size", "1G")]
    [TestCase("invalid parameter 'cluster_size'", "-O", "raw", "-o", "cluster_size=4k", "--size", "1G")]
    [TestCase("image size is too large", "-O", "qcow2", "-o", "cluster_size=512", "--size", "100T")]
    [TestCase("Invalid image size", "-O", "qcow2", "--size", "12Q")]
    [TestCase("Invalid image size", "-O", "qcow2", "--size", "-5")]
    [TestCase("'vmdk'", "-O", "vmdk", "--size", "1G")]
    [TestCase("Either --size N or one filename", "-O", "qcow2")]
    [TestCase("--output must be used with human or json as argument.", "--output=xml", "--size", "1G")]
    [TestCase("--image-opts, -f, and -l require a filename argument.", "-f", "qcow2", "-O", "qcow2", "--size", "1G")]
    public void Bad_input_fails_like_qemu_img_with_a_message_naming_the_problem(string message, params string[] args)
    {
        var qemu = Qemu.ImgResult(["measure", .. args]);
        var ours = CliRunner.Run(["measure", .. args]);
        qemu.ExitCode.ShouldBe(1, qemu.Output + qemu.Error);
        ours.ShouldSatisfyAllConditions(
            () => ours.ExitCode.ShouldBe(1),
            () => ours.Output.ShouldBeEmpty(),
            () => ours.Error.ShouldContain(message),
            () => ours.Error.ShouldNotContain("   at "));
    }

    [Test]
    public void A_size_and_a_source_together_are_refused()
    {
        var image = new ImageBuilder(Directory).Create("a.qcow2", MiB);
        var ours = CliRunner.Run("measure", "--size", "1G", image);
        ours.ExitCode.ShouldBe(1);
        ours.Error.ShouldContain("--size N cannot be used together with a filename");
        Qemu.ImgResult("measure", "--size", "1G", image).ExitCode.ShouldBe(1);
        CliRunner.Run("measure", image, image).Error.ShouldContain("At most one filename");
        CliRunner.Run("measure", PathOf("missing.qcow2")).Error.ShouldContain("Could not open");

        // -o size does not set the size when a source does, but qemu-img still checks it against the L1 limit.
        string[] hugeOption = ["measure", "-O", "qcow2", "-o", "size=100T,cluster_size=512", image];
        Qemu.ImgResult(hugeOption).ExitCode.ShouldBe(1);
        CliRunner.Run(hugeOption).Error.ShouldContain("image size is too large");
        AssertSameAsQemu(["-O", "qcow2", "-o", "size=1T", image]);
    }

    private static void AssertSameAsQemu(string[] args)
    {
        var qemu = Qemu.ImgResult(["measure", .. args]);
        qemu.ExitCode.ShouldBe(0, $"qemu-img measure {string.Join(' ', args)}: {qemu.Error}");
        var ours = CliRunner.Run(["measure", .. args]);
        ours.ShouldSatisfyAllConditions(
            () => ours.ExitCode.ShouldBe(0, ours.Error),
            () => ours.Output.ShouldBe(qemu.Output, $"qcow2 measure {string.Join(' ', args)}"));
    }
}
