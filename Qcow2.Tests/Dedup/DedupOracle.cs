using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>Facts about dedup images read through QEMU rather than through our own code.</summary>
public static class DedupOracle
{
    /// <summary>Distinct host clusters holding guest data of the top image, per qemu-img map.</summary>
    public static int HostDataClusters(string path, int clusterSize)
    {
        var hosts = new HashSet<long>();
        foreach (var entry in ReadMatrixTests.ParseQemuMap(Qemu.Img("map", "--output=json", path)))
        {
            if (entry.Depth != 0 || !entry.Data || entry.Offset is not long offset)
            {
                continue;
            }

            for (long done = 0; done < entry.Length; done += clusterSize)
            {
                hosts.Add((offset + done) / clusterSize);
            }
        }

        return hosts.Count;
    }

    /// <summary>A cluster of random bytes that differs for every seed.</summary>
    public static byte[] Pattern(int seed, int clusterSize)
    {
        var bytes = new byte[clusterSize];
        new Random(seed * 7919).NextBytes(bytes);
        return bytes;
    }

    /// <summary>The whole guest disk reads what the model holds, else a failure naming the first differing byte.</summary>
    public static void AssertReadsModel(Qcow2.Image.Qcow2Image image, SparseModel model, string when = "")
    {
        var actual = new byte[model.Size];
        image.Read(0, actual);
        AssertSame(actual, model, when);
    }

    /// <summary>The same, read through a stream from its start.</summary>
    public static void AssertReadsModel(Stream stream, SparseModel model, string when = "")
    {
        var actual = new byte[model.Size];
        stream.Position = 0;
        stream.ReadExactly(actual);
        AssertSame(actual, model, when);
    }

    private static void AssertSame(byte[] actual, SparseModel model, string when)
    {
        var expected = model.Read(0, (int)model.Size);
        var same = actual.AsSpan().CommonPrefixLength(expected);
        if (same < expected.Length)
        {
            Assert.Fail($"Guest byte 0x{same:x} reads 0x{actual[same]:x2} but the model says 0x{expected[same]:x2} {when}");
        }
    }

    /// <summary>qemu-img check is clean and qemu-img compare says the image equals the raw file.</summary>
    public static void AssertCleanAndEqual(string image, string raw)
    {
        Qemu.AssertClean(image);
        var compare = Qemu.Compare(image, raw);
        compare.ExitCode.ShouldBe(0, compare.Output + compare.Error);
    }
}
