using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Api;

/// <summary>Convert, compare and map as library calls (issue 10, acceptance 4); the CLI verbs wrap them.</summary>
[TestFixture]
[Category("Interop")]
public class ImageCopierTests : TempDirectoryFixture
{
    private const int MiB = 1 << 20;

    [Test]
    public void Three_lines_convert_an_image_with_progress([Values] bool async)
    {
        var from = PathOf("from.qcow2");
        Qemu.Img("create", "-f", "qcow2", from, "8M");
        Qemu.Io(from, "write -P 0x5a 0 1M", "write -P 0x33 5M 4k", "write -z 6M 64k");
        var reports = new List<double>();
        var progress = new SynchronousProgress(reports.Add);

        using (var source = DiskSource.Open(from))
        using (var target = Qcow2Image.Create(PathOf("to.qcow2"), new Qcow2CreateOptions { Size = source.Size }))
        {
            if (async)
            {
                ImageCopier.CopyAsync(source, target, new ImageCopyOptions { Progress = progress }).AsTask().GetAwaiter().GetResult();
            }
            else
            {
                ImageCopier.Copy(source, target, new ImageCopyOptions { Progress = progress });
            }
        }

        Qemu.AssertClean(PathOf("to.qcow2"));
        Qemu.Compare(from, PathOf("to.qcow2"), "qcow2", "qcow2").ExitCode.ShouldBe(0);
        reports.ShouldNotBeEmpty();
        reports.ShouldBe(reports.Order().ToList(), "progress only moves forward");
        reports[^1].ShouldBe(1.0);
        using var copy = Qcow2Image.Open(PathOf("to.qcow2"));
        copy.GetMap(0, copy.Size).Where(e => e.Data).Sum(e => e.Length).ShouldBe(MiB + 65536, "zeros are not copied (the 4k write fills one 64k cluster)");
    }

    [Test]
    public void An_async_compressed_copy_stores_compressed_clusters([Values] bool async)
    {
        var from = PathOf("text.raw");
        var text = System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("qcow2 compresses text well. ", 80_000)));
        File.WriteAllBytes(from, text.AsSpan(0, 2 * MiB).ToArray());
        var to = PathOf("compressed.qcow2");

        using (var source = DiskSource.Open(from, "raw"))
        using (var target = Qcow2Image.Create(to, new Qcow2CreateOptions { Size = source.Size }))
        {
            var options = new ImageCopyOptions { Compress = true };
            if (async)
            {
                ImageCopier.CopyAsync(source, target, options).AsTask().GetAwaiter().GetResult();
            }
            else
            {
                ImageCopier.Copy(source, target, options);
            }
        }

        Qemu.AssertClean(to);
        Qemu.Compare(from, to, "raw", "qcow2").ExitCode.ShouldBe(0);
        new FileInfo(to).Length.ShouldBeLessThan(MiB / 2, "2 MiB of repeated text is stored compressed");
    }

    [Test]
    public void A_stream_of_raw_bytes_converts_into_a_new_image()
    {
        var bytes = new byte[3 * MiB];
        new Random(5).NextBytes(bytes.AsSpan(MiB, 4096));
        var path = PathOf("from-stream.qcow2");
        using (var source = DiskSource.FromStream(new MemoryStream(bytes)))
        using (var target = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = source.Size, ClusterSize = 4096 }))
        {
            source.Format.ShouldBe("raw");
            ImageCopier.CopyAsync(source, target).AsTask().GetAwaiter().GetResult();
        }

        Qemu.AssertClean(path);
        using var image = Qcow2Image.Open(path);
        var actual = new byte[bytes.Length];
        image.Read(0, actual);
        actual.ShouldBe(bytes);
        image.GetMap(0, image.Size).Where(e => e.Data).Sum(e => e.Length).ShouldBe(4096, "only the cluster holding data is written");
    }

    [Test]
    public void Convert_refuses_to_write_over_its_source()
    {
        var path = PathOf("self.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 0x11 0 64k");
        Should.Throw<IOException>(() => ImageCopier.Convert(path, path)).Message.ShouldContain("source");
        Qemu.Io(path, "read -P 0x11 0 64k");
    }

    [Test]
    public void Copying_to_raw_keeps_zeros_as_holes_and_compare_finds_the_first_difference()
    {
        var from = PathOf("from.qcow2");
        Qemu.Img("create", "-f", "qcow2", from, "4M");
        Qemu.Io(from, "write -P 0x7e 1M 8k");
        var raw = PathOf("to.raw");
        using (var source = DiskSource.Open(from))
        using (var output = FileStorage.Create(raw))
        {
            ImageCopier.CopyToRaw(source, output);
        }

        Qemu.Compare(from, raw).ExitCode.ShouldBe(0);
        using (var first = DiskSource.Open(from))
        using (var second = DiskSource.Open(raw))
        {
            second.Format.ShouldBe("raw");
            second.GetMap(0, second.Size).Where(e => e.Data).Sum(e => e.Length).ShouldBeLessThan(4 * MiB);
            DiskComparer.FindFirstDifference(first, second).ShouldBeNull();
        }

        using (var file = File.OpenWrite(raw))
        {
            file.Position = MiB + 100;
            file.WriteByte(0);
        }

        using (var first = DiskSource.Open(from))
        using (var second = DiskSource.Open(raw))
        {
            DiskComparer.FindFirstDifferenceAsync(first, second).AsTask().GetAwaiter().GetResult().ShouldBe(MiB + 100);
        }
    }

    [Test]
    public void A_target_with_a_backing_file_receives_only_what_differs()
    {
        var basePath = PathOf("base.qcow2");
        Qemu.Img("create", "-f", "qcow2", basePath, "4M");
        Qemu.Io(basePath, "write -P 0x44 0 1M");
        var from = PathOf("from.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-b", basePath, "-F", "qcow2", from);
        Qemu.Io(from, "write -P 0x55 256k 64k", "write -z 512k 64k");
        var to = PathOf("to.qcow2");
        using (var source = DiskSource.Open(from))
        using (var target = Qcow2Image.Create(to, new Qcow2CreateOptions { Size = source.Size, BackingFile = basePath, BackingFormat = "qcow2" }))
        {
            ImageCopier.Copy(source, target);
        }

        Qemu.AssertClean(to);
        Qemu.Compare(from, to, "qcow2", "qcow2").ExitCode.ShouldBe(0);
        using var copy = Qcow2Image.Open(to);
        copy.GetMap(0, copy.Size).Where(e => e.Depth == 0 && (e.Data || e.Zero) && e.Present).Sum(e => e.Length).ShouldBe(128 * 1024);
    }

    [Test]
    public void A_dedup_target_shares_repeats_with_fingerprints_computed_while_the_previous_chunk_is_written([Values] bool async, [Values] bool withBacking)
    {
        // Fingerprints are computed for a whole chunk as it is read and sliced per run of written
        // clusters: runs that start mid-chunk, after unchanged or zero clusters, and a source whose
        // size is not a multiple of the cluster size must each get their own clusters' hashes.
        const int cluster = 65536;
        var size = (20L * MiB) + 12288;
        var raw = new byte[size];
        new Random(9).NextBytes(raw); // distinct clusters everywhere...
        for (var at = 5L * cluster; at < size - cluster; at += 7L * cluster)
        {
            raw.AsSpan((int)at, cluster).Clear(); // ...cut into runs by zero clusters...
        }

        var block = raw.AsSpan(MiB, MiB).ToArray();
        foreach (var at in new[] { (9L * MiB) + (3 * cluster), (17L * MiB) + cluster })
        {
            block.CopyTo(raw, at); // ...and one MiB repeated at unaligned places in later chunks
        }

        raw.AsSpan((int)(size - 5000)).Fill(0x6b); // a partial last cluster (the size is not a multiple of 64 KiB)
        var from = PathOf("from.raw");
        File.WriteAllBytes(from, raw);
        var basePath = PathOf("base.qcow2");
        if (withBacking)
        {
            Qemu.Img("create", "-f", "qcow2", basePath, size.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Qemu.IoFormat("qcow2", basePath, "write -P 0x44 0 2M");
        }

        var to = PathOf("to.qcow2");
        var create = new Qcow2CreateOptions { Size = size, ClusterSize = cluster, BackingFile = withBacking ? basePath : null, BackingFormat = withBacking ? "qcow2" : null };
        using (var source = DiskSource.Open(from))
        using (var target = Qcow2Image.Create(to, QcowDedup.Qcow2.Dedup.DedupImageExtensions.WithDedup(create)))
        {
            if (async)
            {
                ImageCopier.CopyAsync(source, target).AsTask().GetAwaiter().GetResult();
            }
            else
            {
                ImageCopier.Copy(source, target);
            }

            QcowDedup.Qcow2.Dedup.DedupImageExtensions.GetDedupStatistics(target).ClustersDeduplicated.ShouldBeGreaterThanOrEqualTo(2 * 14, "both repeats of the block's 14 non-zero clusters are shared");
        }

        Qemu.AssertClean(to);
        Qemu.Compare(to, from).ExitCode.ShouldBe(0);
    }

    [Test]
    public void A_target_smaller_than_the_source_is_refused()
    {
        using var source = DiskSource.FromStream(new MemoryStream(new byte[2 * MiB]));
        using var target = Qcow2Image.Create(PathOf("small.qcow2"), new Qcow2CreateOptions { Size = MiB });
        Should.Throw<ArgumentException>(() => ImageCopier.Copy(source, target)).ParamName.ShouldBe("target");
    }

    /// <summary>Reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SynchronousProgress(Action<double> report) : IProgress<double>
    {
        public void Report(double value) => report(value);
    }
}
