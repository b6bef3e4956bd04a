using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>The images the parity suite runs on, all made by qemu-img and qemu-io (never by us).</summary>
internal static class ParityFixtures
{
    /// <summary>Builds every fixture in <paramref name="directory"/>, backing files named relative to it.</summary>
    public static void Build(string directory)
    {
        Qemu.WorkingDirectory.Value = directory;
        try
        {
            Img("create", "-q", "-f", "qcow2", "base.qcow2", "16M");
            Qemu.Io("base.qcow2", "write -P 1 0 2M", "write -P 2 8M 1M");
            Img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
            Qemu.Io("top.qcow2", "write -P 3 1M 512k", "write -z 8M 512k", "write -P 4 15M 4k");
            Img("create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "deep.qcow2");
            Qemu.Io("deep.qcow2", "write -P 14 1536k 1M", "write -z 8704k 64k", "discard 15M 64k");
            Img("create", "-q", "-f", "raw", "raw.img", "16M");
            Qemu.IoFormat("raw", "raw.img", "write -P 5 0 1M", "write -P 6 12M 64k");
            Img("create", "-q", "-f", "qcow2", "snap.qcow2", "16M");
            Qemu.Io("snap.qcow2", "write -P 7 0 1M");
            Img("snapshot", "-c", "s1", "snap.qcow2");
            Qemu.Io("snap.qcow2", "write -P 8 512k 1M");
            Img("snapshot", "-c", "s2", "snap.qcow2");
            Img("create", "-q", "-f", "qcow2", "bm.qcow2", "16M");
            Img("bitmap", "--add", "bm.qcow2", "a");
            Qemu.Io("bm.qcow2", "write -P 9 2M 64k");
            Img("bitmap", "--add", "-g", "4k", "--disable", "bm.qcow2", "d");
            Img("convert", "-c", "-O", "qcow2", "base.qcow2", "comp.qcow2");
            Img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "base.qcow2", "zstd.qcow2");
            Img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "16M");
            Qemu.Io("v2.qcow2", "write -P 10 3M 1M");
            Img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "ext.qcow2", "16M");
            Qemu.Io("ext.qcow2", "write -P 11 4k 8k", "write -z 1M 64k");
            Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=8", "c4k.qcow2", "16M");
            Qemu.Io("c4k.qcow2", "write -P 12 100k 300k");
            Img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "dirty.qcow2", "16M");
            Qemu.IoUnchecked("dirty.qcow2", "write -P 13 0 1M", "abort");
            Img("create", "-q", "-f", "qcow2", "-o", "data_file=ext.data", "ext-data.qcow2", "4M");
            Qemu.Io("ext-data.qcow2", "write -P 15 64k 64k");
            // 1 KiB clusters: one L2 table maps 128 KiB. The second L1 entry points 512 bytes into
            // its L2 table, which QEMU opens and reads around (convert --salvage), like a torn write.
            Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=1k", "badl2.qcow2", "512k");
            Qemu.Io("badl2.qcow2", "write -P 16 0 512k");
            var badL2 = Path.Combine(directory, "badl2.qcow2");
            var l1 = (long)ImagePatch.ReadU64(badL2, 40);
            ImagePatch.WriteU64(badL2, l1 + 8, ImagePatch.ReadU64(badL2, l1 + 8) + 512);
            File.WriteAllBytes(Path.Combine(directory, "empty.img"), []);
            File.WriteAllText(Path.Combine(directory, "text.txt"), "not an image\n");
        }
        finally
        {
            Qemu.WorkingDirectory.Value = null;
        }
    }

    /// <summary>The qcow2 fixtures, for verbs that take any image.</summary>
    public static readonly string[] Qcow2Images = ["base.qcow2", "top.qcow2", "deep.qcow2", "snap.qcow2", "bm.qcow2", "comp.qcow2", "zstd.qcow2", "v2.qcow2", "ext.qcow2", "c4k.qcow2", "dirty.qcow2"];

    /// <summary>Every fixture a verb may be pointed at, images and not.</summary>
    public static readonly string[] AllFiles = [.. Qcow2Images, "raw.img", "empty.img", "text.txt", "missing.qcow2"];

    public static bool IsImage(string name) => name.EndsWith(".qcow2", StringComparison.Ordinal) || name.EndsWith(".img", StringComparison.Ordinal) || name.EndsWith(".raw", StringComparison.Ordinal);

    /// <summary>"qcow2" or "raw" as the file's first bytes say; null for an empty file.</summary>
    public static string? FormatOf(string path)
    {
        var head = new byte[4];
        using var file = File.OpenRead(path);
        return file.Read(head) < 4 ? (file.Length == 0 ? null : "raw") : head.AsSpan().SequenceEqual(Magic) ? "qcow2" : "raw";
    }

    private static readonly byte[] Magic = [0x51, 0x46, 0x49, 0xfb];

    private static void Img(params string[] args) => Qemu.Img(args);
}
