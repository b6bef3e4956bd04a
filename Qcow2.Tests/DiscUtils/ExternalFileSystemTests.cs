using DiscUtils;
using DiscUtils.Fat;
using DiscUtils.Ntfs;
using QcowDedup.Qcow2.DiscUtils;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.VirtualDisks;

/// <summary>
/// Issue 12, acceptance 2: FAT32 (mkfs.fat + mcopy) and NTFS (mkntfs + ntfscp) made outside our code,
/// converted by qemu-img to qcow2 (plain, compressed, and as an overlay QEMU wrote over a backing
/// file), read file by file through VirtualDisk.OpenDisk. ntfscp cannot make directories, so the
/// NTFS tree is flat.
/// </summary>
[TestFixture]
public sealed class ExternalFileSystemTests : TempDirectoryFixture
{
    private const int Chunk = 64 << 10;

    [OneTimeSetUp]
    public void Register() => Qcow2DiscUtils.Register();

    [TestCase("fat")]
    [TestCase("ntfs")]
    public void A_file_system_made_outside_reads_file_by_file_through_OpenDisk(string kind)
    {
        var tree = kind == "fat" ? FileTree.Generate(150, seed: 7) : FileTree.Generate(40, seed: 8, flat: true);
        var half = tree.Files.Count / 2;
        var first = PathOf("first.raw");
        Format(kind, first);
        Populate(kind, first, tree.Files.Take(half), "stage1");
        var full = PathOf("full.raw");
        File.Copy(first, full);
        Populate(kind, full, tree.Files.Skip(half), "stage2");

        var plain = PathOf("plain.qcow2");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", full, plain);
        ShouldRead(kind, plain, tree);

        var compressed = PathOf("compressed.qcow2");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-c", full, compressed);
        Qemu.Img("check", "--output=json", compressed).ShouldNotContain("\"compressed-clusters\": 0,");
        ShouldRead(kind, compressed, tree);

        // The overlay holds only what the second half changed; the rest comes from the backing file.
        var basePath = PathOf("base.qcow2");
        var overlay = PathOf("overlay.qcow2");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", first, basePath);
        Qemu.Img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay);
        var changed = WriteDifferences(first, full, overlay);
        changed.ShouldBeGreaterThan(0);
        ((long)changed).ShouldBeLessThan(new FileInfo(full).Length / Chunk / 2);
        Qemu.Compare(overlay, full).ExitCode.ShouldBe(0);
        ShouldRead(kind, overlay, tree);
        using var disk = VirtualDisk.OpenDisk(overlay, FileAccess.Read);
        disk.Layers.Count().ShouldBe(2);
    }

    private static void ShouldRead(string kind, string path, FileTree tree)
    {
        using var disk = VirtualDisk.OpenDisk(path, FileAccess.Read);
        disk.ShouldBeOfType<Qcow2Disk>();
#pragma warning disable CA1416 // DiscUtils marks NtfsFileSystem Windows-only for its writing (security descriptors); reading works everywhere.
        using DiscFileSystem fileSystem = kind == "fat" ? new FatFileSystem(disk.Content) : new NtfsFileSystem(disk.Content);
#pragma warning restore CA1416
        tree.ShouldMatch(fileSystem);
        fileSystem.GetFiles(string.Empty, "*.BIN", SearchOption.AllDirectories).Length.ShouldBe(tree.Files.Count);
    }

    private static void Format(string kind, string path)
    {
        if (kind == "fat")
        {
            Qemu.Tool("mkfs.fat", "-C", "-F", "32", "-s", "1", "-n", "EXTERNAL", path, "65536"); // 64 MiB, 512-byte clusters: FAT32
        }
        else
        {
            using (var file = File.Create(path))
            {
                file.SetLength(32 << 20);
            }

            Qemu.Tool("mkntfs", "-F", "-Q", "-q", path);
        }
    }

    private void Populate(string kind, string image, IEnumerable<(string Path, byte[] Data)> files, string stage)
    {
        var staging = PathOf(stage);
        foreach (var (path, data) in files)
        {
            var host = Path.Combine(staging, path.Replace('\\', '/'));
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(host)!);
            File.WriteAllBytes(host, data);
            if (kind == "ntfs")
            {
                Qemu.Tool("ntfscp", "-f", "-q", image, host, path);
            }
        }

        if (kind == "fat")
        {
            // Recursive, merging into directories that exist, overwriting without asking.
            Qemu.Tool("mcopy", ["-i", image, "-s", "-Q", "-D", "o", .. System.IO.Directory.GetFileSystemEntries(staging), "::/"]);
        }
    }

    /// <summary>Writes the 64 KiB chunks where <paramref name="after"/> differs from <paramref name="before"/> into the overlay with qemu-io.</summary>
    private int WriteDifferences(string before, string after, string overlay)
    {
        using var old = File.OpenRead(before);
        using var now = File.OpenRead(after);
        var a = new byte[Chunk];
        var b = new byte[Chunk];
        var commands = new List<string>();
        for (long offset = 0; offset < now.Length; offset += Chunk)
        {
            old.ReadExactly(a);
            now.ReadExactly(b);
            if (!a.AsSpan().SequenceEqual(b))
            {
                var piece = PathOf($"chunk{commands.Count}.bin");
                File.WriteAllBytes(piece, b);
                commands.Add($"write -s {piece} {offset} {Chunk}");
            }
        }

        foreach (var batch in commands.Chunk(200))
        {
            Qemu.Io(overlay, batch);
        }

        return commands.Count;
    }
}
