using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// Sizes on the command line read as qemu-img reads them (qemu_strtosz): decimal, hexadecimal,
/// fractions with a unit, and the same refusals, each in one line. qemu-img measure -O raw --size
/// is the oracle because it prints any size it accepts, rounded up to whole sectors.
/// </summary>
[TestFixture]
[Category("Interop")]
public class SizeSyntaxTests
{
    [TestCase("512")]
    [TestCase("4k")]
    [TestCase("1.5M")]
    [TestCase("1.k")]
    [TestCase("1b")]
    [TestCase("0100k")]
    [TestCase("0x100000")]
    [TestCase("0X10")]
    [TestCase("0x1E")]
    [TestCase("0x1B")]
    [TestCase(" +1M")]
    [TestCase("1E")]
    [TestCase("7.99E")]
    [TestCase("0x7ffffffffffffe00")]
    public void Sizes_qemu_img_takes_are_taken_with_the_same_value(string size)
    {
        var theirs = Qemu.ImgResult("measure", "-O", "raw", "--size", size);
        var ours = CliRunner.Run("measure", "-O", "raw", "--size", size);
        theirs.ExitCode.ShouldBe(0, theirs.Error);
        ours.ShouldSatisfyAllConditions(
            () => ours.ExitCode.ShouldBe(0, ours.Error),
            () => ours.Output.ShouldBe(theirs.Output));
    }

    [TestCase("", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("abc", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("1.5", "You may use k, M, G, T, P or E suffixes")]
    [TestCase(".5k", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("1.5B", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("1M ", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("1KiB", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("1e3", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("k", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("0x", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("0x1.5k", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("1.5.5G", "You may use k, M, G, T, P or E suffixes")]
    [TestCase("8E", "Must be between 0 and 9223372036854775807.")]
    [TestCase("99999999999999999999", "Must be between 0 and 9223372036854775807.")]
    [TestCase("0x8000000000000000", "Must be between 0 and 9223372036854775807.")]
    [TestCase("0xffffffffffffffffff", "Must be between 0 and 9223372036854775807.")]
    public void Sizes_qemu_img_refuses_are_refused_in_its_words(string size, string reason)
    {
        var theirs = Qemu.ImgResult("measure", "-O", "raw", "--size", size);
        var ours = CliRunner.Run("measure", "-O", "raw", "--size", size);
        theirs.ExitCode.ShouldBe(1);
        theirs.Error.ReplaceLineEndings(" ").ShouldContain(reason);
        ours.ShouldSatisfyAllConditions(
            () => ours.ExitCode.ShouldBe(1),
            () => ours.Error.ShouldBe(theirs.Error.Replace("qemu-img:", "qcow2:", StringComparison.Ordinal)));
    }

    [Test]
    public void A_raw_size_that_rounds_up_past_the_largest_long_is_refused_not_printed_negative()
    {
        var ours = CliRunner.Run("measure", "-O", "raw", "--size", "0x7fffffffffffffff");
        ours.ExitCode.ShouldBe(1);
        ours.Output.ShouldBeEmpty();
        ours.Error.ShouldBe("qcow2: Invalid image size specified. Must be between 0 and 9223372036854775296.\n");
    }
}
