namespace QcowDedup.Qcow2.Tests.Interop;

/// <summary>
/// Cells of the interop read matrix: every way QEMU 7.2 writes an image that a reader must get
/// right. Each cell builds its image with qemu-img/qemu-io at test time.
/// </summary>
public static class ReadMatrix
{
    private const long MiB = 1L << 20;

    public static IEnumerable<TestCaseData> Cells()
    {
        foreach (var (name, build) in All())
        {
            yield return new TestCaseData(new ReadCell(name, build)).SetName(name);
        }
    }

    private static IEnumerable<(string, Func<ImageBuilder, BuiltImage>)> All()
    {
        yield return ("v2_compat_0.10_64k", b => Scattered(b, "compat=0.10", 64 * 1024));
        foreach (var cluster in new[] { 512, 4096, 65536, 2 * 1024 * 1024 })
        {
            yield return ($"v3_cluster_{cluster}", b => Scattered(b, $"cluster_size={cluster}", cluster));
        }

        foreach (var bits in new[] { 1, 2, 4, 8, 16, 32, 64 })
        {
            yield return ($"refcount_bits_{bits}", b => Scattered(b, $"refcount_bits={bits},cluster_size=4096", 4096));
        }

        yield return ("convert_compressed_zlib", b => Compressed(b, "zlib"));
        yield return ("convert_compressed_zstd", b => Compressed(b, "zstd"));
        yield return ("zero_writes_v2", b => ZeroWrites(b, "compat=0.10"));
        yield return ("zero_writes_v3", b => ZeroWrites(b, "compat=1.1"));
        yield return ("extended_l2_16k", b => ExtendedL2(b, 16 * 1024));
        yield return ("extended_l2_2M", b => ExtendedL2(b, 2 * 1024 * 1024));
        yield return ("backing_chain_qcow2_qcow2_raw", BackingChain);
        yield return ("overlay_larger_than_backing", b => Overlay(b, backingSize: 1 * MiB, overlaySize: 5 * MiB));
        yield return ("overlay_smaller_than_backing", b => Overlay(b, backingSize: 6 * MiB, overlaySize: 2 * MiB));
        yield return ("data_file", b => DataFile(b, raw: false));
        yield return ("data_file_raw", b => DataFile(b, raw: true));
        yield return ("internal_snapshots", Snapshots);
        foreach (var mode in new[] { "metadata", "falloc", "full" })
        {
            yield return ($"preallocation_{mode}", b => Preallocated(b, mode));
        }

        yield return ("lazy_refcounts_dirty", LazyDirty);
        yield return ("bitmap_added", Bitmap);
    }

    private static BuiltImage Scattered(ImageBuilder b, string options, int clusterSize)
    {
        var l2Coverage = (long)clusterSize * (clusterSize / 8);
        var size = Math.Max(64 * MiB, 2 * l2Coverage + (2 * clusterSize));
        var image = b.Create("image.qcow2", size, options);
        b.Io(image, ImageBuilder.ScatteredWrites(size, clusterSize, l2Coverage));
        return new BuiltImage(image);
    }

    private static BuiltImage Compressed(ImageBuilder b, string compression)
    {
        var size = 16 * MiB;
        var raw = b.CreateRaw("source.raw", size);
        b.IoRaw(raw, [.. ImageBuilder.ScatteredWrites(size, 65536, long.MaxValue / 4), "write -P 0x66 3M 1M"]);
        var random = new byte[256 * 1024];
        new Random(7).NextBytes(random);
        using (var file = new FileStream(raw, FileMode.Open))
        {
            file.Position = 5 * MiB;
            file.Write(random);
        }

        var image = b.PathOf("image.qcow2");
        Infrastructure.Qemu.Img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", $"compression_type={compression}", raw, image);
        return new BuiltImage(image);
    }

    private static BuiltImage ZeroWrites(ImageBuilder b, string options)
    {
        var image = b.Create("image.qcow2", 8 * MiB, options);
        b.Io(image, "write -P 0x11 0 256k", "write -z 64k 64k", "write -z 1M 128k", "write -P 0x22 2M 64k", "write -z 2M 64k", "write -z 3M 4k", "write -P 0x33 4M 64k", "write -z -u 4M 64k");
        return new BuiltImage(image);
    }

    private static BuiltImage ExtendedL2(ImageBuilder b, int clusterSize)
    {
        var l2Coverage = (long)clusterSize * (clusterSize / 16);
        var size = Math.Max(64 * MiB, 2 * l2Coverage + (2 * clusterSize));
        var image = b.Create("image.qcow2", size, $"extended_l2=on,cluster_size={clusterSize}");
        var sub = clusterSize / 32;
        b.Io(image, [.. ImageBuilder.ScatteredWrites(size, clusterSize, l2Coverage),
            $"write -P 0x66 {4 * clusterSize + sub} {sub}",
            $"write -P 0x67 {4 * clusterSize + (5 * sub) + 100} 700",
            $"write -z {5 * clusterSize + (2 * sub)} {3 * sub}",
            $"write -P 0x68 {6 * clusterSize} {clusterSize}",
            $"write -z {6 * clusterSize + sub} {sub}"]);
        return new BuiltImage(image);
    }

    private static BuiltImage BackingChain(ImageBuilder b)
    {
        var size = 8 * MiB;
        var raw = b.CreateRaw("base.raw", size);
        b.IoRaw(raw, "write -P 0x10 0 1M", "write -P 0x11 5M 64k");
        var mid = b.Create("mid.qcow2", size, backing: "base.raw", backingFormat: "raw");
        b.Io(mid, "write -P 0x20 512k 1M", "write -z 5M 4k", "write -P 0x21 7M 4k");
        var top = b.Create("top.qcow2", size, backing: "mid.qcow2", backingFormat: "qcow2");
        b.Io(top, "write -P 0x30 768k 100k", "write -P 0x31 7M 1k");
        return new BuiltImage(top);
    }

    private static BuiltImage Overlay(ImageBuilder b, long backingSize, long overlaySize)
    {
        var backing = b.Create("backing.qcow2", backingSize);
        b.Io(backing, $"write -P 0x41 0 {backingSize}");
        var overlay = b.Create("overlay.qcow2", overlaySize, backing: "backing.qcow2", backingFormat: "qcow2");
        b.Io(overlay, "write -P 0x42 64k 4k", $"write -P 0x43 {overlaySize - 4096} 4096");
        return new BuiltImage(overlay);
    }

    private static BuiltImage DataFile(ImageBuilder b, bool raw)
    {
        var image = b.Create("image.qcow2", 16 * MiB, $"data_file=image.data,data_file_raw={(raw ? "on" : "off")}");
        b.Io(image, ImageBuilder.ScatteredWrites(16 * MiB, 65536, long.MaxValue / 4));
        b.Io(image, "write -z 2M 64k");
        return new BuiltImage(image);
    }

    private static BuiltImage Snapshots(ImageBuilder b)
    {
        var image = b.Create("image.qcow2", 8 * MiB);
        b.Io(image, "write -P 0x51 0 128k", "write -P 0x52 1M 64k");
        Infrastructure.Qemu.Img("snapshot", "-c", "first", image);
        b.Io(image, "write -P 0x53 0 4k", "write -P 0x54 2M 64k", "write -z 1M 64k");
        Infrastructure.Qemu.Img("snapshot", "-c", "second", image);
        b.Io(image, "write -P 0x55 64k 64k", "discard 2M 64k");
        return new BuiltImage(image, ["first", "second"]);
    }

    private static BuiltImage Preallocated(ImageBuilder b, string mode)
    {
        var size = 8 * MiB;
        var image = b.Create("image.qcow2", size, $"preallocation={mode},cluster_size=4096");
        b.Io(image, ImageBuilder.ScatteredWrites(size, 4096, 4096L * 512));
        b.Io(image, "write -z 3M 64k");
        return new BuiltImage(image);
    }

    private static BuiltImage LazyDirty(ImageBuilder b)
    {
        var image = b.Create("image.qcow2", 8 * MiB, "lazy_refcounts=on");
        // qemu-io's abort kills the process after the flush, so the dirty bit stays set.
        Infrastructure.Qemu.IoUnchecked(image, "write -P 0x71 0 64k", "write -P 0x72 3M 1k", "flush", "abort");
        return new BuiltImage(image);
    }

    private static BuiltImage Bitmap(ImageBuilder b)
    {
        var image = b.Create("image.qcow2", 8 * MiB);
        b.Io(image, "write -P 0x61 0 64k");
        Infrastructure.Qemu.Img("bitmap", "--add", image, "tracked");
        b.Io(image, "write -P 0x62 1M 64k");
        return new BuiltImage(image);
    }
}

/// <summary>One matrix cell (named for the test runner).</summary>
public sealed record ReadCell(string Name, Func<ImageBuilder, BuiltImage> Build)
{
    public override string ToString() => Name;
}
