using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Dedup;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>
/// A workload the fault harness cuts: how its pristine image is made, how it is opened, what it
/// does, and (for dedup) what to try after recovery.
/// </summary>
/// <param name="Name">Shown in test names and reports.</param>
/// <param name="Create">Makes the pristine image in a directory and returns its path.</param>
/// <param name="Options">Makes the options for one read-write open (the workload's, the recovery's): extensions serve one image each.</param>
/// <param name="Body">The operations; the harness closes the image afterwards.</param>
/// <param name="AfterRecovery">Runs on the recovered image after the data was verified.</param>
public sealed record FaultWorkload(string Name, Func<string, string> Create, Func<Qcow2OpenOptions> Options, Action<WorkloadContext> Body, Func<Qcow2Image, string?>? AfterRecovery = null)
{
    public override string ToString() => Name;
}

/// <summary>The workloads of issue 9, acceptance 1: each drives the engine through one kind of metadata change.</summary>
public static class FaultWorkloads
{
    private static Qcow2OpenOptions Writable() => new() { Writable = true };

    public static IEnumerable<FaultWorkload> All =>
    [
        AllocatingWrites, CopyOnWriteOverBacking, RefcountTableGrowth, L1GrowthOnResize, Snapshots,
        DiscardAndWriteZeroes, LazyRefcounts, ExtendedL2, DedupShares,
    ];

    /// <summary>Scattered writes into an empty image: new L2 tables and refcount blocks, some overwrites.</summary>
    public static FaultWorkload AllocatingWrites { get; } = new("allocating-writes",
        dir => CreateImage(dir, new Qcow2CreateOptions { Size = 4 << 20, ClusterSize = 512 }),
        Writable,
        w => ScatteredWrites(w, count: 40, maxLength: 3000, flushEvery: 7));

    /// <summary>Partial writes over a raw backing file: every first write copies the rest of its cluster from below.</summary>
    public static FaultWorkload CopyOnWriteOverBacking { get; } = new("cow-over-backing",
        dir =>
        {
            var backing = new byte[(4 << 20) - 8192];
            new Random(3).NextBytes(backing);
            File.WriteAllBytes(Path.Combine(dir, "base.raw"), backing);
            return CreateImage(dir, new Qcow2CreateOptions { Size = 4 << 20, ClusterSize = 512, RefcountBits = 64, BackingFile = "base.raw", BackingFormat = "raw" });
        },
        Writable,
        w => ScatteredWrites(w, count: 40, maxLength: 3000, flushEvery: 7));

    /// <summary>
    /// 64-bit refcounts in 512-byte clusters: a block covers 64 clusters and a table cluster 64
    /// blocks. The pristine image already fills almost all of them (1.9 MiB of data), so the
    /// workload's writes need new refcount blocks beyond the table: it is replaced.
    /// </summary>
    public static FaultWorkload RefcountTableGrowth { get; } = new("refcount-table-growth",
        dir =>
        {
            var path = CreateImage(dir, new Qcow2CreateOptions { Size = 20 << 20, ClusterSize = 512, RefcountBits = 64 });
            Qemu.Io(path, "write -P 0x3c 18M 1900k");
            return path;
        },
        Writable,
        w =>
        {
            var tables = new HashSet<long> { w.Image.Header.Header.RefcountTableOffset };
            for (var i = 0; i < 12; i++)
            {
                w.Write(i * 3L << 19, w.RandomBytes(24 * 1024)); // 1.5 MiB apart, 48 clusters each
                tables.Add(w.Image.Header.Header.RefcountTableOffset);
                if (i % 4 == 3)
                {
                    w.Flush();
                }
            }

            w.Coverage["refcount table moves"] = tables.Count - 1;
        });

    /// <summary>The disk grows past what its L1 table covers, and is written at the new end each time.</summary>
    public static FaultWorkload L1GrowthOnResize { get; } = new("l1-growth-on-resize",
        dir => CreateImage(dir, new Qcow2CreateOptions { Size = 256 << 10, ClusterSize = 512 }),
        Writable,
        w =>
        {
            w.Write(0, w.RandomBytes(2000));
            foreach (var newSize in new long[] { 1 << 20, 3 << 20, 8 << 20 })
            {
                w.Resize(newSize);
                var size = w.Size; // unchanged when the resize failed with an injected I/O error
                w.Write(size - 3000, w.RandomBytes(3000));
                w.Write(size / 2, w.RandomBytes(700));
                w.Flush();
            }
        });

    /// <summary>Internal snapshots: created over data (refcounts rise, COPIED clears), written over (copy on write), deleted.</summary>
    public static FaultWorkload Snapshots { get; } = new("snapshots",
        dir => CreateImage(dir, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 4096 }),
        Writable,
        w =>
        {
            w.Write(0, w.RandomBytes(64 * 1024));
            w.CreateSnapshot("one");
            w.Write(4096 + 100, w.RandomBytes(9000));
            w.Flush();
            w.CreateSnapshot("two");
            w.Write(32 * 1024, w.RandomBytes(20 * 1024));
            w.DeleteSnapshot("one");
            w.Write(8 * 1024, w.RandomBytes(4096));
            w.Flush();
            w.DeleteSnapshot("two");
            w.Write(0, w.RandomBytes(5000));
        });

    /// <summary>Discards and zero writes free clusters that later writes need: no reuse may expose another offset's data.</summary>
    public static FaultWorkload DiscardAndWriteZeroes { get; } = new("discard-and-write-zeroes",
        dir => CreateImage(dir, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 512 }),
        Writable,
        w =>
        {
            w.Write(0, w.RandomBytes(64 * 1024));
            w.Flush();
            for (var i = 0; i < 24; i++)
            {
                var cluster = w.Random.Next(128);
                switch (i % 4)
                {
                    case 0:
                        w.Discard(cluster * 512L, 512L * w.Random.Next(1, 8));
                        break;
                    case 1:
                        w.WriteZeroes(cluster * 512L, 512L * w.Random.Next(1, 8), unmap: w.Random.Next(2) == 0);
                        break;
                    default:
                        w.Write((128 + w.Random.Next(1024)) * 512L, w.RandomBytes(512 * w.Random.Next(1, 6)));
                        break;
                }

                if (i % 9 == 8)
                {
                    w.Flush();
                }
            }
        });

    /// <summary>Lazy refcounts: refcount updates wait for the flush, under the dirty bit.</summary>
    public static FaultWorkload LazyRefcounts { get; } = new("lazy-refcounts",
        dir => CreateImage(dir, new Qcow2CreateOptions { Size = 2 << 20, ClusterSize = 512, LazyRefcounts = true }),
        Writable,
        w =>
        {
            ScatteredWrites(w, count: 24, maxLength: 2000, flushEvery: 8);
            w.Discard(0, 64 * 1024);
            w.Write(100 * 1024, w.RandomBytes(3000));
        });

    /// <summary>Extended L2 entries: partial writes allocate subclusters, zero writes set zero bits.</summary>
    public static FaultWorkload ExtendedL2 { get; } = new("extended-l2",
        dir => CreateImage(dir, new Qcow2CreateOptions { Size = 2 << 20, ClusterSize = 16384, ExtendedL2 = true }),
        Writable,
        w =>
        {
            for (var i = 0; i < 30; i++)
            {
                var offset = w.Random.NextInt64(0, w.Size - 20000);
                if (i % 5 == 4)
                {
                    w.WriteZeroes(offset / 512 * 512, 512L * w.Random.Next(1, 40), unmap: false);
                }
                else
                {
                    w.Write(offset, w.RandomBytes(w.Random.Next(1, 5000)));
                }

                if (i % 8 == 7)
                {
                    w.Flush();
                }
            }
        });

    private const int DedupPool = 8;
    private const int DedupClusters = 96;
    private const int DedupProbeCluster = 200;
    private static readonly DedupOptions Dedup = new() { LogStoreOrder = 3, MaxIncarnations = 2 }; // 32 slots, a two-block journal

    /// <summary>
    /// Dedup with 512-byte clusters (many L2 tables, so shares cross tables): duplicates over shared
    /// clusters, partial rewrites, discards, and enough churn that the journal packs and the log store freezes.
    /// </summary>
    public static FaultWorkload DedupShares { get; } = new("dedup-shares",
        dir =>
        {
            var path = Path.Combine(dir, "pristine.qcow2");
            using var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 512 }.WithDedup(Dedup));
            image.Write(0, DedupOracle.Pattern(0, 512)); // an index entry from an earlier, cleanly closed session
            return path;
        },
        () => new Qcow2OpenOptions { Writable = true }.WithDedup(Dedup),
        w =>
        {
            var size = w.ClusterSize;
            for (var i = 0; i < 70; i++)
            {
                w.Write(size, DedupOracle.Pattern(1 + (i % 2), size)); // churn: frees a cluster and re-indexes a content each time
                if (i % 8 == 7)
                {
                    w.Flush(); // freed clusters become reusable, so the journal fills with few live records and packs
                }
            }

            for (var i = 0; i < 120; i++)
            {
                var offset = (long)w.Random.Next(DedupClusters) * size;
                switch (w.Random.Next(10))
                {
                    case < 5:
                        w.Write(offset, DedupOracle.Pattern(w.Random.Next(DedupPool), size));
                        break;
                    case < 7:
                        var bytes = w.RandomBytes(w.Random.Next(1, size));
                        w.Write(offset + w.Random.Next(size - bytes.Length + 1), bytes);
                        break;
                    case 7:
                        w.Discard(offset, size);
                        break;
                    default:
                        w.Write(offset, DedupOracle.Pattern(1000 + i, size)); // unique: fills the tiny log store
                        break;
                }

                if (i % 9 == 8)
                {
                    w.Flush();
                }
            }

            var index = w.Image.GetExtension<DedupExtension>()!.Index!;
            w.Coverage["journal packs"] = index.Packs;
            w.Coverage["log store freezes"] = index.Freezes;
        },
        image =>
        {
            // Every content the workload used, written again through the recovered index: a hit on
            // an entry whose cluster lost its bytes would read back differently.
            var size = image.ClusterSize;
            var probe = new byte[size];
            for (var content = 0; content < DedupPool; content++)
            {
                var offset = (long)(DedupProbeCluster + content) * size;
                image.Write(offset, DedupOracle.Pattern(content, size));
                image.Read(offset, probe);
                if (!probe.AsSpan().SequenceEqual(DedupOracle.Pattern(content, size)))
                {
                    return $"content {content} written after recovery reads back differently (shared with wrong bytes)";
                }
            }

            return null;
        });

    private static string CreateImage(string dir, Qcow2CreateOptions options)
    {
        var path = Path.Combine(dir, "pristine.qcow2");
        Qcow2Image.Create(path, options).Dispose();
        return path;
    }

    private static void ScatteredWrites(WorkloadContext w, int count, int maxLength, int flushEvery)
    {
        for (var i = 0; i < count; i++)
        {
            w.Write(w.Random.NextInt64(0, w.Size - maxLength), w.RandomBytes(w.Random.Next(1, maxLength)));
            if (i % flushEvery == flushEvery - 1)
            {
                w.Flush();
            }
        }
    }
}
