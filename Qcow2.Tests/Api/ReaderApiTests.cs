using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Api;

[TestFixture]
[Category("Interop")]
public class ReaderApiTests : TempDirectoryFixture
{
    private ImageBuilder _builder = null!;

    [SetUp]
    public void MakeBuilder() => _builder = new ImageBuilder(Directory);

    [Test]
    public void Extents_tell_allocated_zero_and_backing_ranges_with_host_offsets()
    {
        var backing = _builder.Create("base.qcow2", 1 << 20);
        _builder.Io(backing, "write -P 1 0 1M");
        var top = _builder.Create("top.qcow2", 1 << 20, backing: "base.qcow2", backingFormat: "qcow2");
        _builder.Io(top, "write -P 2 64k 128k", "write -z 512k 64k");

        using var image = Qcow2Image.Open(top);
        var extents = image.GetExtents(0, image.Size);

        extents.Select(e => (e.Start, e.Length, e.Kind)).ShouldBe(
        [
            (0, 65536, ExtentKind.Backing),
            (65536, 131072, ExtentKind.Allocated),
            (196608, 327680, ExtentKind.Backing),
            (524288, 65536, ExtentKind.Zero),
            (589824, 458752, ExtentKind.Backing),
        ]);
        extents[1].HostOffset.ShouldNotBeNull();
        var direct = new byte[131072];
        using (var file = File.OpenRead(top))
        {
            file.Position = extents[1].HostOffset!.Value;
            file.ReadExactly(direct);
        }

        direct.ShouldAllBe(b => b == 2);
    }

    [Test]
    public void Extents_of_an_image_without_backing_are_unallocated_not_backing()
    {
        var path = _builder.Create("solo.qcow2", 1 << 20);
        using var image = Qcow2Image.Open(path);
        image.GetExtents(0, image.Size).ShouldHaveSingleItem().Kind.ShouldBe(ExtentKind.Unallocated);
    }

    [Test]
    public void Backing_chain_is_listed_top_to_bottom()
    {
        var raw = _builder.CreateRaw("base.raw", 1 << 20);
        _builder.Create("mid.qcow2", 1 << 20, backing: "base.raw", backingFormat: "raw");
        var top = _builder.Create("top.qcow2", 2 << 20, backing: "mid.qcow2", backingFormat: "qcow2");

        using var image = Qcow2Image.Open(top);
        image.BackingChain.Select(e => (e.Depth, e.Format, e.Path)).ShouldBe(
            [(0, "qcow2", top), (1, "qcow2", _builder.PathOf("mid.qcow2")), (2, "raw", raw)]);
        image.BackingChain[2].Name.ShouldBe("base.raw");
    }

    [Test]
    public void A_custom_resolver_supplies_backing_files()
    {
        var real = _builder.Create("real-base.qcow2", 1 << 20);
        _builder.Io(real, "write -P 9 0 4k");
        var top = _builder.Create("top.qcow2", 1 << 20, backing: "real-base.qcow2", backingFormat: "qcow2");
        Qemu.Img("rebase", "-u", "-b", "catalog://base/v1", "-F", "qcow2", top);

        var resolver = new CatalogResolver(new Dictionary<string, string> { ["catalog://base/v1"] = real });
        using var image = Qcow2Image.Open(top, new Qcow2OpenOptions { BackingResolver = resolver });
        var buffer = new byte[4096];
        image.Read(0, buffer);
        buffer.ShouldAllBe(b => b == 9);
        resolver.Requests.ShouldHaveSingleItem().ShouldBe(new FileReference("catalog://base/v1", FileReferenceKind.BackingFile, top, false));
    }

    [Test]
    public void Backing_files_can_be_ignored()
    {
        var backing = _builder.Create("base.qcow2", 1 << 20);
        _builder.Io(backing, "write -P 1 0 1M");
        var top = _builder.Create("top.qcow2", 1 << 20, backing: "base.qcow2", backingFormat: "qcow2");
        using var image = Qcow2Image.Open(top, new Qcow2OpenOptions { BackingFiles = BackingFileMode.Ignore });
        var buffer = new byte[16];
        image.Read(0, buffer);
        buffer.ShouldAllBe(b => b == 0);
    }

    [Test]
    public void An_image_opens_from_a_caller_stream_which_is_left_open_when_asked()
    {
        var path = _builder.Create("image.qcow2", 1 << 20);
        _builder.Io(path, "write -P 3 8k 4k");
        var bytes = new MemoryStream(File.ReadAllBytes(path));
        using (var image = Qcow2Image.Open(bytes, new Qcow2OpenOptions { LeaveOpen = true }))
        {
            var buffer = new byte[4096];
            image.Read(8192, buffer);
            buffer.ShouldAllBe(b => b == 3);
        }

        bytes.CanRead.ShouldBeTrue();
    }

    [Test]
    public void Snapshots_and_bitmaps_are_listed()
    {
        var path = _builder.Create("image.qcow2", 1 << 20);
        Qemu.Img("snapshot", "-c", "one", path);
        Qemu.Img("snapshot", "-c", "two", path);
        Qemu.Img("bitmap", "--add", "-g", "128k", path, "dirty");

        using var image = Qcow2Image.Open(path);
        image.Snapshots.Select(s => (s.Id, s.Name)).ShouldBe([("1", "one"), ("2", "two")]);
        image.Snapshots[0].DiskSize.ShouldBe(1 << 20);
        image.Bitmaps.ShouldHaveSingleItem().Name.ShouldBe("dirty");
        image.Bitmaps[0].Granularity.ShouldBe(128 * 1024);
        Should.Throw<KeyNotFoundException>(() => image.OpenSnapshot("three", SnapshotLookup.IdThenName));
    }

    [Test]
    public void Reads_outside_the_disk_are_argument_errors()
    {
        var path = _builder.Create("image.qcow2", 1 << 20);
        using var image = Qcow2Image.Open(path);
        Should.Throw<ArgumentOutOfRangeException>(() => image.Read((1 << 20) - 10, new byte[20]));
        Should.Throw<ArgumentOutOfRangeException>(() => image.Read(-1, new byte[1]));
    }

    private sealed class CatalogResolver(Dictionary<string, string> catalog) : IBackingFileResolver
    {
        public List<FileReference> Requests { get; } = [];

        public IStorage Open(FileReference reference)
        {
            Requests.Add(reference);
            return FileStorage.Open(catalog[reference.Name], reference.Writable);
        }
    }
}
