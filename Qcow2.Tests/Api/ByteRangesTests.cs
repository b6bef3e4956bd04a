using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Tests.Api;

/// <summary>The sorted range lists the copy loop asks "does this chunk touch what the target shows?" (a binary search now).</summary>
[TestFixture]
public class ByteRangesTests
{
    private static readonly List<(long Start, long End)> Ranges = [(10, 20), (30, 40), (50, 60)];

    [TestCase(0, 10, false)]
    [TestCase(0, 11, true)]
    [TestCase(19, 30, true)]
    [TestCase(20, 30, false)]
    [TestCase(39, 41, true)]
    [TestCase(40, 50, false)]
    [TestCase(55, 100, true)]
    [TestCase(60, 100, false)]
    [TestCase(0, 100, true)]
    public void Overlaps_matches_a_linear_scan(long start, long end, bool expected)
    {
        ByteRanges.Overlaps(Ranges, start, end).ShouldBe(expected);
        Ranges.Any(r => r.Start < end && start < r.End).ShouldBe(expected);
    }

    [Test]
    public void Nothing_overlaps_an_empty_list() => ByteRanges.Overlaps([], 0, long.MaxValue).ShouldBeFalse();
}
