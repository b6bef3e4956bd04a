using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>
/// One valid image the mutator starts from, with the files it names (backing file, data file)
/// held in memory under the names the image uses.
/// </summary>
internal sealed record FuzzSeed(string Name, byte[] Image, IReadOnlyDictionary<string, byte[]> Sidecars, bool Dedup)
{
    /// <summary>How many times more often than a 64 KiB seed this one is picked (big seeds cost more).</summary>
    public int Weight => Image.Length > (8 << 20) ? 1 : 4;
}

/// <summary>
/// Builds the seed images once per machine into a cache directory: every variant QEMU makes
/// (compat 0.10 and 1.1, lazy refcounts, extended L2, refcount widths 1..64, zlib and zstd
/// compressed clusters, snapshots, persistent bitmaps, a backing file, an external data file,
/// 512-byte and 2 MiB clusters) and images our dedup writer makes. Small disks keep a case fast.
/// </summary>
internal static class FuzzSeeds
{
    /// <summary>Bump when a seed changes, so stale caches are not reused.</summary>
    private const string CacheVersion = "v1";
    private const long Size = 4L << 20;

    private static readonly Lazy<IReadOnlyList<FuzzSeed>> All = new(Build);

    public static IReadOnlyList<FuzzSeed> Seeds => All.Value;

    public static string CacheDirectory =>
        Environment.GetEnvironmentVariable("QCOWDEDUP_FUZZ_SEED_CACHE")
        ?? Path.Combine(Path.GetTempPath(), $"qcowdedup-fuzz-seeds-{CacheVersion}");

    public static FuzzSeed Find(string name) => Seeds.FirstOrDefault(s => s.Name == name) ?? throw new KeyNotFoundException($"no fuzz seed '{name}'");

    private static readonly (string Name, Action<Builder> Make, bool Dedup)[] Recipes =
    [
        ("compat010", b => b.Qcow2("-o", "compat=0.10").Scatter(), false),
        ("compat11", b => b.Qcow2().Scatter(), false),
        ("lazy", b => b.Qcow2("-o", "lazy_refcounts=on").Scatter(), false),
        ("extl2", b => b.Qcow2("-o", "extended_l2=on").Io("write -P 0x61 4k 4k", "write -P 0x62 70k 10k", "write -z 200k 8k").Scatter(), false),
        ("refcount1", b => b.Qcow2("-o", "refcount_bits=1").Scatter(), false),
        ("refcount2", b => b.Qcow2("-o", "refcount_bits=2").Scatter(), false),
        ("refcount4", b => b.Qcow2("-o", "refcount_bits=4").Scatter(), false),
        ("refcount8", b => b.Qcow2("-o", "refcount_bits=8").Scatter(), false),
        ("refcount32", b => b.Qcow2("-o", "refcount_bits=32").Scatter(), false),
        ("refcount64", b => b.Qcow2("-o", "refcount_bits=64").Scatter(), false),
        ("zlib", b => b.Compressed("zlib"), false),
        ("zstd", b => b.Compressed("zstd"), false),
        ("snapshots", b => b.Qcow2().Scatter().Img("snapshot", "-c", "s1", "$").Io("write -P 0x71 0 100k").Img("snapshot", "-c", "s2", "$").Io("write -P 0x72 1M 64k"), false),
        ("bitmaps", b => b.Qcow2().Img("bitmap", "--add", "$", "b0").Img("bitmap", "--add", "-g", "512k", "$", "b1").Scatter(), false),
        ("backing", b => b.Backing(), false),
        ("datafile", b => b.Qcow2("-o", "data_file=image.data").Scatter().Sidecar("image.data"), false),
        ("clusters512", b => b.Qcow2("-o", "cluster_size=512").Io("write -P 0x31 0 3k", "write -P 0x32 700k 5k"), false),
        ("clusters2m", b => b.Qcow2("-o", "cluster_size=2M").Io("write -P 0x41 0 4k", "write -P 0x42 3M 4k"), false),
        ("dedup", b => b.Dedup(65536), true),
        ("dedup4k", b => b.Dedup(4096), true),
    ];

    private static IReadOnlyList<FuzzSeed> Build()
    {
        var root = CacheDirectory;
        var seeds = new List<FuzzSeed>();
        foreach (var (name, make, dedup) in Recipes)
        {
            var directory = Path.Combine(root, name);
            if (!File.Exists(Path.Combine(directory, "done")))
            {
                var building = directory + $".building-{Environment.ProcessId}";
                if (Directory.Exists(building))
                {
                    Directory.Delete(building, recursive: true);
                }

                Directory.CreateDirectory(building);
                Qemu.WorkingDirectory.Value = building;
                try
                {
                    make(new Builder(building));
                }
                finally
                {
                    Qemu.WorkingDirectory.Value = null;
                }

                File.WriteAllText(Path.Combine(building, "done"), name);
                try
                {
                    Directory.Move(building, directory);
                }
                catch (IOException) when (File.Exists(Path.Combine(directory, "done")))
                {
                    Directory.Delete(building, recursive: true); // another run built it meanwhile
                }
            }

            var sidecars = File.Exists(Path.Combine(directory, "sidecars"))
                ? File.ReadAllLines(Path.Combine(directory, "sidecars")).Where(l => l.Length > 0).ToDictionary(l => l, l => File.ReadAllBytes(Path.Combine(directory, l)))
                : [];
            seeds.Add(new FuzzSeed(name, File.ReadAllBytes(Path.Combine(directory, "image.qcow2")), sidecars, dedup));
        }

        return seeds;
    }

    /// <summary>Makes one seed in its directory; "$" in an argument list stands for the image.</summary>
    private sealed class Builder(string directory)
    {
        private string Image => Path.Combine(directory, "image.qcow2");

        public Builder Qcow2(params string[] options)
        {
            Qemu.Img(["create", "-f", "qcow2", .. options, Image, Size.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            return this;
        }

        public Builder Img(params string[] args)
        {
            Qemu.WorkingDirectory.Value = directory;
            Qemu.Img([.. args.Select(a => a == "$" ? Image : a)]);
            return this;
        }

        public Builder Io(params string[] commands)
        {
            Qemu.WorkingDirectory.Value = directory;
            Qemu.Io(Image, commands);
            return this;
        }

        /// <summary>Data at the first and last cluster, a partial cluster and the middle.</summary>
        public Builder Scatter() => Io("write -P 0x11 0 64k", "write -P 0x22 65659 1000", "write -P 0x44 4032k 64k", "write -P 0x55 2M 3000");

        public Builder Compressed(string type)
        {
            var raw = Path.Combine(directory, "source.raw");
            Qemu.Img("create", "-f", "raw", raw, "4M");
            Qemu.IoFormat("raw", raw, "write -P 0x11 0 64k", "write -P 0x22 128k 200k", "write -P 0x33 3M 64k");
            Qemu.Img("convert", "-c", "-O", "qcow2", "-o", $"compression_type={type}", raw, Image);
            File.Delete(raw);
            return Io("write -P 0x44 1M 64k"); // one uncompressed cluster beside the compressed ones
        }

        public Builder Backing()
        {
            var backing = Path.Combine(directory, "backing.qcow2");
            Qemu.Img("create", "-f", "qcow2", backing, "4M");
            Qemu.Io(backing, "write -P 0x11 0 256k", "write -P 0x12 3M 64k");
            Qemu.WorkingDirectory.Value = directory;
            Qemu.Img("create", "-f", "qcow2", "-b", "backing.qcow2", "-F", "qcow2", Image);
            Io("write -P 0x21 64k 64k", "write -P 0x22 2M 1000");
            return Sidecar("backing.qcow2");
        }

        public Builder Dedup(int clusterSize)
        {
            var a = new byte[clusterSize];
            var b = new byte[clusterSize];
            new Random(clusterSize).NextBytes(a);
            new Random(clusterSize + 1).NextBytes(b);
            using (var image = Qcow2Image.Create(Image, new Qcow2CreateOptions { Size = Size, ClusterSize = clusterSize }.WithDedup()))
            {
                for (var i = 0; i < 12; i++)
                {
                    image.Write(i * 3L * clusterSize, i % 3 == 0 ? b : a);
                }
            }

            using (var image = Qcow2Image.Open(Image, new Qcow2OpenOptions { Writable = true }.WithDedup()))
            {
                image.Write(40L * clusterSize, a); // a second session: more journal entries
                image.Write(41L * clusterSize, b.AsSpan(0, clusterSize / 2));
            }

            return this;
        }

        public Builder Sidecar(string name)
        {
            File.AppendAllLines(Path.Combine(directory, "sidecars"), [name]);
            return this;
        }
    }
}
