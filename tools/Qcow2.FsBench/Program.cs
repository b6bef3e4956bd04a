using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using DiscUtils;
using DiscUtils.Fat;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

// Copies a generated tree twice through a FAT32 file system (DiscUtils) onto a fresh qcow2 image,
// once without and once with dedup, and prints one line per run: time, fsyncs, fsyncs per GiB
// written, host clusters stored, and whether every file read back equal. Usage:
//   dotnet run -c Release --project tools/Qcow2.FsBench -- DIR [FILES] [CLUSTER_SIZE] [ROUNDS] [plain|dedup]
if (args.Length < 1)
{
    Console.Error.WriteLine("usage: Qcow2.FsBench DIR [FILES=1500] [CLUSTER_SIZE=4096] [ROUNDS=3]");
    return 2;
}

var work = args[0];
var files = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 1500;
var clusterSize = args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 4096;
var rounds = args.Length > 3 ? int.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 3;
bool[] modes = args.Length > 4 ? [args[4] == "dedup"] : [false, true]; // "plain" or "dedup" runs one side only (for a profiler)
Directory.CreateDirectory(work);
var tree = Tree.Generate(files, seed: 11);
Console.WriteLine($"tree: {files} files, {tree.Sum(f => (long)f.Length) / 1048576.0:F1} MiB, written twice; {clusterSize}-byte clusters");
var failed = false;
for (var round = 0; round < rounds; round++)
{
    foreach (var dedup in modes)
    {
        var result = FsRun.Run(Path.Combine(work, dedup ? "dedup.qcow2" : "plain.qcow2"), tree, clusterSize, dedup);
        failed |= !result.Verified;
        Console.WriteLine(
            $"{(dedup ? "dedup" : "plain"),-5} round {round + 1}: {result.Seconds:F2} s, {result.Fsyncs} fsyncs ({result.Fsyncs / (result.BytesWritten / 1073741824.0):F0}/GiB written), " +
            $"du {result.AllocatedBytes / 1048576.0:F1} MiB{result.DedupSummary}, verified {(result.Verified ? "yes" : "NO")}");
    }
}

return failed ? 1 : 0;

/// <summary>The generated files: sizes like a source tree (mostly small, a few large), random bytes.</summary>
internal static class Tree
{
    public static List<byte[]> Generate(int count, int seed)
    {
        var random = new Random(seed);
        var tree = new List<byte[]>(count);
        for (var i = 0; i < count; i++)
        {
            var pick = random.NextDouble();
            var size = pick < 0.7 ? random.Next(200, 16 << 10) : pick < 0.95 ? random.Next(16 << 10, 256 << 10) : random.Next(256 << 10, 4 << 20);
            var data = new byte[size];
            random.NextBytes(data);
            tree.Add(data);
        }

        return tree;
    }
}

internal sealed record FsResult(double Seconds, long Fsyncs, long BytesWritten, long AllocatedBytes, string DedupSummary, bool Verified);

/// <summary>One run: create the image, format FAT32 with its data area aligned to the clusters, copy the tree twice, verify.</summary>
internal static class FsRun
{
    private const long DiskSize = 2L << 30;
    private const int SectorSize = 512;

    public static FsResult Run(string path, List<byte[]> tree, int clusterSize, bool dedup)
    {
        File.Delete(path);
        var create = new Qcow2CreateOptions { Size = DiskSize, ClusterSize = clusterSize };
        using (Qcow2Image.Create(path, dedup ? create.WithDedup() : create))
        {
        }

        var clock = Stopwatch.StartNew();
        var file = FileStorage.Open(path, writable: true);
        var open = new Qcow2OpenOptions { Writable = true };
        long fsyncs;
        var summary = string.Empty;
        using (var image = Qcow2Image.Open(file, dedup ? open.WithDedup() : open))
        using (var disk = image.OpenStream())
        {
            using (var fs = FormatAligned(disk, clusterSize))
            {
                for (var copy = 0; copy < 2; copy++)
                {
                    CopyTree(fs, $"COPY{copy}", tree);
                }
            }

            disk.Flush();
            fsyncs = file.DiskFlushes;
            if (dedup)
            {
                var stats = image.GetDedupStatistics();
                summary = $" ({stats.ClustersDeduplicated} of {stats.ClustersWritten} whole-cluster writes shared; freezes {stats.Freezes}, packs {stats.Packs}, invalidations {stats.Invalidations})";
            }
        }

        var seconds = clock.Elapsed.TotalSeconds;
        var bytes = 2 * tree.Sum(f => (long)f.Length);
        using var check = Qcow2Image.Open(path);
        var verified = Verify(check, tree);
        var report = check.Check();
        return new FsResult(seconds, fsyncs, bytes, check.Info.ActualSize, summary, verified && report.Corruptions == 0 && report.Leaks == 0);
    }

    /// <summary>FAT32 whose data area starts on a cluster boundary, so file clusters fill whole image clusters.</summary>
    private static FatFileSystem FormatAligned(Stream disk, int clusterSize)
    {
        var sectors = (int)(DiskSize / SectorSize);
        var geometry = Geometry.FromCapacity(DiskSize);
        short reserved = 32;
        for (var attempt = 0; attempt < 2; attempt++)
        {
            using (FatFileSystem.FormatPartition(disk, "BENCH", geometry, 0, sectors, reserved))
            {
            }

            var boot = new byte[SectorSize];
            disk.Position = 0;
            disk.ReadExactly(boot);
            var dataStart = (BinaryPrimitives.ReadUInt16LittleEndian(boot.AsSpan(14)) + (boot[16] * (long)BinaryPrimitives.ReadUInt32LittleEndian(boot.AsSpan(36)))) * SectorSize;
            var misalignment = (int)(dataStart % clusterSize);
            if (misalignment == 0)
            {
                break;
            }

            reserved += (short)((clusterSize - misalignment) / SectorSize);
        }

        disk.Position = 0;
        return new FatFileSystem(disk);
    }

    private static void CopyTree(FatFileSystem fs, string root, List<byte[]> tree)
    {
        fs.CreateDirectory(root);
        for (var i = 0; i < tree.Count; i++)
        {
            var directory = $"{root}\\D{i / 100:D3}";
            if (i % 100 == 0)
            {
                fs.CreateDirectory(directory);
            }

            using var stream = fs.OpenFile($"{directory}\\F{i:D5}.BIN", FileMode.Create, FileAccess.Write);
            stream.Write(tree[i]);
        }
    }

    private static bool Verify(Qcow2Image image, List<byte[]> tree)
    {
        using var fs = new FatFileSystem(image.OpenStream());
        for (var copy = 0; copy < 2; copy++)
        {
            for (var i = 0; i < tree.Count; i++)
            {
                using var stream = fs.OpenFile($"COPY{copy}\\D{i / 100:D3}\\F{i:D5}.BIN", FileMode.Open, FileAccess.Read);
                var read = new byte[stream.Length];
                stream.ReadExactly(read);
                if (!SHA256.HashData(read).AsSpan().SequenceEqual(SHA256.HashData(tree[i])))
                {
                    return false;
                }
            }
        }

        return true;
    }
}
