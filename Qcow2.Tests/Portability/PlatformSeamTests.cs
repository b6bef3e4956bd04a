using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Portability;

/// <summary>
/// The sparse-file seam (issue 12): Linux's implementation is the one in use here and finds holes
/// and punches them; a platform without the calls degrades to "all data, nothing punched" instead
/// of failing. The macOS and Windows implementations compile everywhere and run only there.
/// </summary>
[TestFixture]
public sealed class PlatformSeamTests : Infrastructure.TempDirectoryFixture
{
    [Test]
    public void Linux_finds_and_punches_holes_through_the_seam()
    {
        Assume.That(OperatingSystem.IsLinux(), "the Linux implementation");
        SparseFile.PlatformName.ShouldBe("linux");
        var path = PathOf("sparse.bin");
        using (var file = File.Create(path))
        {
            file.SetLength(4 << 20);
            file.Position = 1 << 20;
            file.Write(Enumerable.Repeat((byte)1, 1 << 20).ToArray());
        }

        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        SparseFile.TryGetDataExtent(handle, 0, 4 << 20, out var isData, out var end).ShouldBeTrue();
        (isData, end).ShouldBe((false, 1L << 20));
        SparseFile.TryGetDataExtent(handle, 1 << 20, 4 << 20, out isData, out end).ShouldBeTrue();
        (isData, end).ShouldBe((true, 2L << 20));

        SparseFile.TryPunchHole(handle, 1 << 20, 512 << 10).ShouldBeTrue();
        SparseFile.TryGetDataExtent(handle, 1 << 20, 4 << 20, out isData, out end).ShouldBeTrue();
        (isData, end).ShouldBe((false, (1L << 20) + (512 << 10)));
        var bytes = File.ReadAllBytes(path);
        bytes.AsSpan(1 << 20, 512 << 10).ContainsAnyExcept((byte)0).ShouldBeFalse();
        bytes.AsSpan((1 << 20) + (512 << 10), 512 << 10).ContainsAnyExcept((byte)1).ShouldBeFalse();
    }

    [Test]
    public void A_platform_without_the_calls_reports_data_everywhere_and_punches_nothing()
    {
        var none = new NoSparseFiles();
        using var handle = File.OpenHandle(PathOf("x"), FileMode.Create, FileAccess.ReadWrite);
        none.DataExtent(handle, 0, 100).Known.ShouldBeFalse();
        none.PunchHole(handle, 0, 100).ShouldBeFalse();
        none.Allocate(handle, 0, 100).ShouldBeFalse();
        none.Name.ShouldBe("none");
    }
}
