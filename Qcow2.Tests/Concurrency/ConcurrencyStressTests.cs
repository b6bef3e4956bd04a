using System.Diagnostics;
using System.Security.Cryptography;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Concurrency;

/// <summary>
/// Many threads hammer one image with every kind of request at once, sync and async mixed, on a
/// region they all share and on small regions each thread owns. Nothing may throw or hang; each
/// owned region must read back as its own model says; the closed image must check clean; and with
/// dedup no content may be stored twice.
/// </summary>
[TestFixture]
[Category("Interop")]
public class ConcurrencyStressTests : TempDirectoryFixture
{
    private const int Threads = 8;
    private const int ClusterSize = 4096;
    private const int SharedClusters = 96;  // every thread writes here: requests overlap
    private const int OwnedClusters = 48;   // per thread: checked against its model
    private const int PoolSize = 24;        // contents written again and again, so dedup shares them
    private static readonly TimeSpan Stall = TimeSpan.FromSeconds(60);

    /// <summary>Total operations over all threads: QCOWDEDUP_STRESS_OPS, default 100,000.</summary>
    private static int TotalOperations =>
        int.TryParse(Environment.GetEnvironmentVariable("QCOWDEDUP_STRESS_OPS"), out var ops) && ops > 0 ? ops : 100_000;

    [Test]
    public void Mixed_requests_from_many_threads_keep_data_and_metadata_consistent([Values] bool dedup)
    {
        var path = PathOf("stress.qcow2");
        // The requests touch the first 2 MiB only; the disk is larger so that the dedup index is
        // sized for a real disk (a log store of a few hundred entries would freeze constantly).
        var size = 1L << 30;
        var create = new Qcow2CreateOptions { Size = size, ClusterSize = ClusterSize };
        var pool = Enumerable.Range(0, PoolSize).Select(i => RandomBytes(new Random(1000 + i), ClusterSize)).ToArray();
        var perThread = Math.Max(1, TotalOperations / Threads);
        var models = Enumerable.Range(0, Threads).Select(_ => new SparseModel(size)).ToArray();
        var progress = new long[Threads];
        var failures = new List<Exception>();
        long deduplicated = 0;
        var watch = Stopwatch.StartNew();

        var image = Qcow2Image.Create(path, dedup ? create.WithDedup() : create);
        Qcow2Image? toClose = image;
        try
        {
            var workers = Enumerable.Range(0, Threads).Select(t => new Thread(() =>
            {
                try
                {
                    RunWorkerAsync(image, t, perThread, pool, models[t], progress).GetAwaiter().GetResult();
                }
                catch (Exception e)
                {
                    lock (failures)
                    {
                        failures.Add(e);
                    }
                }
            })
            { IsBackground = true, Name = $"stress-{t}" }).ToArray();
            foreach (var worker in workers)
            {
                worker.Start();
            }

            if (!WaitWithWatchdog(workers, progress))
            {
                toClose = null; // deadlocked: closing it would hang too
                Assert.Fail($"no request completed for {Stall.TotalSeconds:F0} s (deadlock?); progress per thread: {string.Join(", ", progress)}");
            }

            failures.ShouldBeEmpty(string.Join("\n\n", failures.Take(3)));

            for (var t = 0; t < Threads; t++)
            {
                var (start, length) = OwnedRange(t);
                var actual = new byte[length];
                image.Read(start, actual);
                actual.ShouldBe(models[t].Read(start, (int)length), $"thread {t}'s region");
            }

            if (dedup)
            {
                var statistics = image.GetDedupStatistics();
                deduplicated = statistics.ClustersDeduplicated;
                TestContext.Out.WriteLine(statistics);
            }
        }
        finally
        {
            toClose?.Dispose();
        }

        var elapsed = watch.Elapsed;
        var report = Qemu.Check(path);
        var duplicates = dedup ? DuplicateHostClusters(path, size) : [];
        TestContext.Out.WriteLine(
            $"stress: dedup={dedup} threads={Threads} ops={perThread * Threads} shares={deduplicated} elapsed={elapsed.TotalSeconds:F1}s " +
            $"({elapsed.TotalMicroseconds / (perThread * Threads):F0} µs/op) duplicate host clusters={duplicates.Count}");
        report.ShouldSatisfyAllConditions(
            () => report.Corruptions.ShouldBe(0, report.Text),
            () => report.Leaks.ShouldBe(0, report.Text),
            () => report.ExitCode.ShouldBe(0, report.Text));
        duplicates.ShouldBeEmpty(string.Join("; ", duplicates));
    }

    private static (long Start, long Length) OwnedRange(int thread) =>
        ((long)(SharedClusters + (thread * OwnedClusters)) * ClusterSize, (long)OwnedClusters * ClusterSize);

    private static async Task RunWorkerAsync(Qcow2Image image, int thread, int operations, byte[][] pool, SparseModel model, long[] progress)
    {
        var random = new Random(thread * 7919 + 17);
        var (ownedStart, ownedLength) = OwnedRange(thread);
        for (var op = 0; op < operations; op++)
        {
            // Half the requests go to the shared region (no model: other threads race there).
            var owned = random.Next(2) == 0;
            var regionStart = owned ? ownedStart : 0L;
            var regionClusters = owned ? (int)(ownedLength / ClusterSize) : SharedClusters;
            var async = random.Next(2) == 0;
            var clusters = random.Next(1, 4);
            var first = random.Next(regionClusters - clusters + 1);
            var offset = regionStart + ((long)first * ClusterSize);
            var length = clusters * ClusterSize;
            switch (random.Next(100))
            {
                case < 30: // whole clusters from the pool: dedup shares these
                    {
                        var data = new byte[length];
                        for (var c = 0; c < clusters; c++)
                        {
                            pool[random.Next(pool.Length)].CopyTo(data, c * ClusterSize);
                        }

                        await WriteAsync(image, offset, data, async);
                        Note(owned, model, offset, data);
                        break;
                    }

                case < 45: // whole clusters of fresh random bytes
                    {
                        var data = RandomBytes(random, length);
                        await WriteAsync(image, offset, data, async);
                        Note(owned, model, offset, data);
                        break;
                    }

                case < 60: // part of a cluster (read-modify-write)
                    {
                        var from = random.Next(ClusterSize);
                        var data = RandomBytes(random, random.Next(1, ClusterSize - from + 1));
                        await WriteAsync(image, offset + from, data, async);
                        Note(owned, model, offset + from, data);
                        break;
                    }

                case < 70: // zeroes, whole or partial clusters
                    {
                        var from = random.Next(2) == 0 ? 0 : random.Next(ClusterSize);
                        var count = Math.Max(1, length - from - (random.Next(2) == 0 ? 0 : random.Next(ClusterSize)));
                        var unmap = random.Next(2) == 0;
                        if (async)
                        {
                            await image.WriteZeroesAsync(offset + from, count, unmap);
                        }
                        else
                        {
                            image.WriteZeroes(offset + from, count, unmap);
                        }

                        if (owned)
                        {
                            model.Zero(offset + from, count);
                        }

                        break;
                    }

                case < 78: // discard whole clusters
                    if (async)
                    {
                        await image.DiscardAsync(offset, length);
                    }
                    else
                    {
                        image.Discard(offset, length);
                    }

                    if (owned)
                    {
                        model.Zero(offset, length);
                    }

                    break;
                case < 99: // reads, checked where the thread owns the bytes
                    {
                        var buffer = new byte[length];
                        if (async)
                        {
                            await image.ReadAsync(offset, buffer);
                        }
                        else
                        {
                            image.Read(offset, buffer);
                        }

                        if (owned && !buffer.AsSpan().SequenceEqual(model.Read(offset, length)))
                        {
                            throw new InvalidOperationException($"thread {thread}, operation {op}: read at 0x{offset:x} differs from the model");
                        }

                        break;
                    }

                default:
                    if (async)
                    {
                        await image.FlushAsync();
                    }
                    else
                    {
                        image.Flush();
                    }

                    break;
            }

            Interlocked.Increment(ref progress[thread]);
        }
    }

    private static async ValueTask WriteAsync(Qcow2Image image, long offset, byte[] data, bool async)
    {
        if (async)
        {
            await image.WriteAsync(offset, data);
        }
        else
        {
            image.Write(offset, data);
        }
    }

    private static void Note(bool owned, SparseModel model, long offset, byte[] data)
    {
        if (owned)
        {
            model.Write(offset, data);
        }
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>Waits for the workers; false when none of them completed a request for <see cref="Stall"/>.</summary>
    private static bool WaitWithWatchdog(Thread[] workers, long[] progress)
    {
        var last = -1L;
        var lastChange = Stopwatch.StartNew();
        while (workers.Any(w => w.IsAlive))
        {
            Thread.Sleep(200);
            var now = progress.Sum(p => Interlocked.Read(ref p));
            if (now != last)
            {
                last = now;
                lastChange.Restart();
            }
            else if (lastChange.Elapsed > Stall)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Host clusters mapped as data whose bytes equal another mapped host cluster's. With dedup on
    /// (and the default share cap, far above what this test reaches) there should be none.
    /// </summary>
    private static List<string> DuplicateHostClusters(string path, long size)
    {
        var hosts = new SortedSet<long>();
        using (var image = Qcow2Image.Open(path))
        {
            foreach (var entry in image.GetMap(0, size))
            {
                if (entry is { Data: true, Zero: false, Offset: long host })
                {
                    for (var done = 0L; done < entry.Length; done += ClusterSize)
                    {
                        hosts.Add(host + done);
                    }
                }
            }
        }

        var byContent = new Dictionary<string, List<long>>();
        using var file = File.OpenRead(path);
        var buffer = new byte[ClusterSize];
        foreach (var host in hosts)
        {
            file.Position = host;
            file.ReadExactly(buffer);
            if (!buffer.AsSpan().ContainsAnyExcept((byte)0))
            {
                continue; // zeros written into part of a cluster can leave it all zero; dedup never hashes those
            }

            var key = Convert.ToHexString(SHA256.HashData(buffer));
            if (!byContent.TryGetValue(key, out var list))
            {
                byContent[key] = list = [];
            }

            list.Add(host);
        }

        return [.. byContent.Where(p => p.Value.Count > 1).Select(p => $"{p.Key[..16]}: {string.Join(", ", p.Value.Select(h => $"0x{h:x}"))}")];
    }
}
