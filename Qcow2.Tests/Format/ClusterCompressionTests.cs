using QcowDedup.Qcow2.Compression;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Tests.Format;

/// <summary>
/// Deflate states are reused across clusters and threads (a reset instead of an init per cluster):
/// each cluster must still come out as a fresh state compresses it, whatever the state did before,
/// including a cluster that did not fit.
/// </summary>
[TestFixture]
public class ClusterCompressionTests
{
    private const int ClusterSize = 65536;

    [Test]
    public void A_reused_deflate_state_compresses_as_a_fresh_one()
    {
        var text = Enumerable.Range(0, ClusterSize).Select(i => (byte)"qcow2 text "[i % 11]).ToArray();
        var random = new byte[ClusterSize];
        new Random(2).NextBytes(random);
        var first = Compress(text);
        Compress(random).ShouldBe(-1, "random bytes do not shrink");
        var mixed = text.ToArray();
        random.AsSpan(0, 20000).CopyTo(mixed.AsSpan(30000));
        var mixedOnce = Compress(mixed);

        var results = new int[64];
        Parallel.For(0, results.Length, i => results[i] = Compress(i % 3 == 0 ? random : i % 3 == 1 ? text : mixed) is var n && n > 0 ? n : -1);

        Compress(text).ShouldBe(first);
        Compress(mixed).ShouldBe(mixedOnce);
        CompressedBytes(text).ShouldBe(CompressedBytes(text), "the same state history gives the same bytes");
        results.Where((_, i) => i % 3 == 1).ShouldAllBe(n => n == first);
        results.Where((_, i) => i % 3 == 2).ShouldAllBe(n => n == mixedOnce);
        RoundTrip(text).ShouldBe(text);
        RoundTrip(mixed).ShouldBe(mixed);
    }

    private static int Compress(byte[] cluster) => ClusterCompression.Compress(CompressionType.Deflate, cluster, new byte[ClusterSize]);

    private static byte[] CompressedBytes(byte[] cluster)
    {
        var compressed = new byte[ClusterSize];
        return compressed.AsSpan(0, ClusterCompression.Compress(CompressionType.Deflate, cluster, compressed)).ToArray();
    }

    private static byte[] RoundTrip(byte[] cluster)
    {
        var compressed = new byte[ClusterSize];
        var length = ClusterCompression.Compress(CompressionType.Deflate, cluster, compressed);
        var back = new byte[ClusterSize];
        ClusterCompression.Decompress(CompressionType.Deflate, compressed.AsSpan(0, length), back, hostOffset: 0);
        return back;
    }
}
