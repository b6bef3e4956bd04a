using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Issue 3, acceptance 1: thousands of random writes, zero writes, discards, flushes, reopens and
/// resizes per variant against an in-memory model. Content must equal the model after every
/// reopen; at the end qemu-img check finds nothing and qemu-img compare says identical.
/// </summary>
[TestFixture]
[Category("Interop")]
public class ModelTests : TempDirectoryFixture
{
    /// <summary>Every variant twice: through the synchronous API and through the asynchronous one.</summary>
    public static IEnumerable<TestCaseData> Variants() =>
        BaseVariants().SelectMany(v => new[] { false, true }.Select(async =>
            new TestCaseData(v with { Async = async }).SetName(async ? v.Name + "_async" : v.Name)));

    private static IEnumerable<ModelVariant> BaseVariants()
    {
        yield return Variant("v2_64k", new() { Version = 2 });
        yield return Variant("v3_512", new() { ClusterSize = 512 });
        yield return Variant("v3_4k", new() { ClusterSize = 4096 });
        yield return Variant("v3_64k", new());
        yield return Variant("v3_2M", new() { ClusterSize = 2 << 20 }, operations: 600);
        yield return Variant("refcount_bits_1", new() { ClusterSize = 4096, RefcountBits = 1 });
        yield return Variant("refcount_bits_16", new() { ClusterSize = 4096, RefcountBits = 16 });
        yield return Variant("refcount_bits_64", new() { ClusterSize = 4096, RefcountBits = 64 });
        yield return Variant("lazy_refcounts", new() { ClusterSize = 4096, LazyRefcounts = true });
        yield return Variant("extended_l2", new() { ClusterSize = 32768, ExtendedL2 = true });
        yield return Variant("qcow2_backing", new() { ClusterSize = 4096 }, backing: "qcow2");
        yield return Variant("raw_backing", new() { ClusterSize = 4096 }, backing: "raw");
        yield return Variant("v2_raw_backing", new() { Version = 2, ClusterSize = 4096 }, backing: "raw");
        yield return Variant("extended_l2_qcow2_backing", new() { ClusterSize = 16384, ExtendedL2 = true }, backing: "qcow2");
        yield return Variant("data_file", new() { ClusterSize = 4096, DataFile = "image.data" });
    }

    [TestCaseSource(nameof(Variants))]
    public void Random_operations_match_the_model_and_stay_clean(ModelVariant variant)
    {
        var run = new ModelRun(variant, Directory);
        run.Execute();

        using (var image = variant.Async ? Qcow2Image.OpenAsync(run.ImagePath).AsTask().GetAwaiter().GetResult() : Qcow2Image.Open(run.ImagePath))
        {
            var own = variant.Async ? image.CheckAsync().AsTask().GetAwaiter().GetResult() : image.Check();
            own.IsClean.ShouldBeTrue(string.Join("\n", own.Messages.Take(20)));
            TestContext.Out.WriteLine($"{variant.Name}: {run.Reopens} reopens, {own.AllocatedClusters} allocated clusters ({own.CompressedClusters} compressed), image end 0x{own.ImageEndOffset:x}, size {image.Size}");
        }

        var report = Qemu.Check(run.ImagePath);
        report.Corruptions.ShouldBe(0, report.Text);
        report.Leaks.ShouldBe(0, report.Text);
        report.CheckErrors.ShouldBe(0, report.Text);
        var raw = PathOf("model.raw");
        run.Model.WriteRaw(raw);
        var compare = Qemu.Compare(run.ImagePath, raw);
        compare.ExitCode.ShouldBe(0, compare.Output + compare.Error);
    }

    private static ModelVariant Variant(string name, Qcow2CreateOptions options, string? backing = null, int operations = 2500) =>
        new(name, options, backing, operations);
}

/// <summary>One variant of the model test.</summary>
public sealed record ModelVariant(string Name, Qcow2CreateOptions Options, string? Backing, int Operations, bool Async = false)
{
    public override string ToString() => Async ? Name + "_async" : Name;
}
