using System.Security.Cryptography;
using DiscUtils;

namespace QcowDedup.Qcow2.Tests.VirtualDisks;

/// <summary>A generated tree of files (8.3 names, as DiscUtils' FAT writes them) and checks of a file system against it.</summary>
public sealed class FileTree
{
    private FileTree(IReadOnlyList<(string Path, byte[] Data)> files) => Files = files;

    /// <summary>Relative paths with '\' separators, and contents.</summary>
    public IReadOnlyList<(string Path, byte[] Data)> Files { get; }

    public long Bytes => Files.Sum(f => (long)f.Data.Length);

    /// <summary><paramref name="count"/> files of random bytes, 100 per directory (none when <paramref name="flat"/>).</summary>
    public static FileTree Generate(int count, int seed, int maxSize = 48 << 10, bool flat = false)
    {
        var random = new Random(seed);
        var files = new List<(string, byte[])>(count);
        for (var i = 0; i < count; i++)
        {
            var data = new byte[random.Next(1, maxSize)];
            random.NextBytes(data);
            files.Add((flat ? $"F{i:D5}.BIN" : $"D{i / 100:D3}\\F{i:D5}.BIN", data));
        }

        return new FileTree(files);
    }

    public FileTree Take(int count) => new([.. Files.Take(count)]);

    /// <summary>Writes the tree under <paramref name="root"/> ("" for the root directory).</summary>
    public void WriteTo(DiscFileSystem fileSystem, string root = "")
    {
        foreach (var (path, data) in Files)
        {
            var full = Join(root, path);
            var directory = full.LastIndexOf('\\') is var split and > 0 ? full[..split] : null;
            if (directory is not null && !fileSystem.DirectoryExists(directory))
            {
                fileSystem.CreateDirectory(directory);
            }

            using var stream = fileSystem.OpenFile(full, FileMode.Create, FileAccess.Write);
            stream.Write(data);
        }
    }

    /// <summary>Writes the tree into a host directory (for mcopy / ntfscp).</summary>
    public void WriteTo(string directory)
    {
        foreach (var (path, data) in Files)
        {
            var full = Path.Combine(directory, path.Replace('\\', '/'));
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllBytes(full, data);
        }
    }

    /// <summary>Asserts every file under <paramref name="root"/> has the tree's SHA-256, and the tree's files are all there.</summary>
    public void ShouldMatch(DiscFileSystem fileSystem, string root = "")
    {
        foreach (var (path, data) in Files)
        {
            var full = Join(root, path);
            fileSystem.FileExists(full).ShouldBeTrue($"{full} is missing");
            using var stream = fileSystem.OpenFile(full, FileMode.Open, FileAccess.Read);
            var read = new byte[stream.Length];
            stream.ReadExactly(read);
            Convert.ToHexString(SHA256.HashData(read)).ShouldBe(Convert.ToHexString(SHA256.HashData(data)), $"content of {full}");
        }
    }

    private static string Join(string root, string path) => root.Length == 0 ? path : $"{root}\\{path}";
}
