using System.Globalization;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Bitmaps;

/// <summary>
/// Persistent dirty bitmaps (issue 13): the same writes made by qemu-io and by us leave bitmaps
/// QEMU loads as consistent and reads as the same dirty regions.
/// </summary>
[TestFixture]
[Category("Interop")]
public class PersistentBitmapTests : TempDirectoryFixture
{
    private const long DiskSize = 64L << 20;

    [TestCase(1, 65536)]
    [TestCase(2, 4096)]
    [TestCase(3, 2 << 20)]
    public void The_same_writes_through_qemu_io_and_through_us_leave_the_same_dirty_regions(int seed, int clusterSize)
    {
        var theirs = Twin("qemu.qcow2", clusterSize);
        var ours = Twin("ours.qcow2", clusterSize);
        var operations = RandomOperations(seed, 48);

        // Two sessions each, so bitmaps stored by one session are loaded, extended and stored again.
        foreach (var half in operations.Chunk(operations.Count / 2))
        {
            Qemu.Io(theirs, [.. half.Select(o => o.QemuIo)]);
            using var image = Qcow2Image.Open(ours, new Qcow2OpenOptions { Writable = true });
            foreach (var operation in half)
            {
                operation.Apply(image);
            }
        }

        Qemu.AssertClean(ours);
        Qemu.Compare(ours, theirs, "qcow2", "qcow2").ExitCode.ShouldBe(0);
        Qemu.Img("info", ours).ShouldNotContain("in-use");
        foreach (var bitmap in new[] { "fine", "coarse", "off" })
        {
            var expected = Qemu.DirtyRanges(theirs, bitmap);
            Qemu.DirtyRanges(ours, bitmap).ShouldBe(expected, bitmap);
            using var readBack = Qcow2Image.Open(theirs);
            readBack.GetDirtyRanges(bitmap).Select(r => (r.Offset, r.Length)).ShouldBe(expected, $"our reading of QEMU's '{bitmap}'");
        }

        Qemu.DirtyRanges(ours, "fine").ShouldNotBeEmpty();
        Qemu.DirtyRanges(ours, "off").ShouldBeEmpty();
    }

    [Test]
    public void A_session_that_writes_nothing_leaves_the_bitmaps_consistent_and_unmoved()
    {
        var path = Twin("a.qcow2", 65536);
        Qemu.Io(path, "write 1M 64k");
        var before = File.ReadAllBytes(path);
        using (Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            Qemu.ImgResult("info", "-U", path).Output.ShouldContain("in-use"); // while open, as QEMU marks them
        }

        File.ReadAllBytes(path).ShouldBe(before);
        Qemu.DirtyRanges(path, "fine").ShouldBe([(1L << 20, 65536L)]);
    }

    [Test]
    public void A_bitmap_left_in_use_stays_inconsistent_and_blocks_a_resize_as_in_qemu()
    {
        var path = Twin("a.qcow2", 65536);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, new byte[4096]);
            File.Copy(path, PathOf("crashed.qcow2")); // the file as a crash here leaves it
        }

        var crashed = PathOf("crashed.qcow2");
        Should.Throw<InvalidOperationException>(() => Qemu.DirtyRanges(crashed, "fine")).Message.ShouldContain("is inconsistent");
        var qemu = Qemu.ImgResult("resize", crashed, "+1M");
        using (var image = Qcow2Image.Open(crashed, new Qcow2OpenOptions { Writable = true }))
        {
            image.PersistentBitmaps.Single(b => b.Name == "fine").Consistent.ShouldBeFalse();
            var refused = Should.Throw<BitmapException>(() => image.Resize(DiskSize + (1 << 20)));
            qemu.Error.ShouldBe($"qemu-img: {refused.Message}\n");
            Should.Throw<BitmapException>(() => image.ClearBitmap("fine"));
            image.Write(8192, new byte[4096]);
            image.RemoveBitmap("fine");
        }

        Qemu.AssertClean(crashed);
        Qemu.Img("info", crashed).ShouldNotContain("name: fine");
        Should.Throw<InvalidOperationException>(() => Qemu.DirtyRanges(crashed, "coarse")).Message.ShouldContain("is inconsistent"); // still, as in QEMU
    }

    [TestCase(DiskSize + (3 << 20) + 512)]
    [TestCase((DiskSize / 2) + 4096)]
    public void Resizing_keeps_the_bitmaps_consistent_and_sized_like_qemu_s(long newSize)
    {
        var theirs = Twin("qemu.qcow2", 65536);
        var ours = Twin("ours.qcow2", 65536);
        var write = $"write 0x{(DiskSize / 2) - 8192:x} 12k";
        Qemu.Io(theirs, write);
        Qemu.Io(ours, write);
        Qemu.Img("resize", "--shrink", theirs, newSize.ToString(CultureInfo.InvariantCulture));
        using (var image = Qcow2Image.Open(ours, new Qcow2OpenOptions { Writable = true }))
        {
            image.Resize(newSize, allowShrink: true);
        }

        Qemu.AssertClean(ours);
        foreach (var bitmap in new[] { "fine", "coarse" })
        {
            Qemu.DirtyRanges(ours, bitmap).ShouldBe(Qemu.DirtyRanges(theirs, bitmap), bitmap);
        }
    }

    [Test]
    public void Bitmap_operations_through_the_library_give_what_qemu_img_bitmap_gives()
    {
        var theirs = Twin("qemu.qcow2", 65536);
        var ours = Twin("ours.qcow2", 65536);
        foreach (var path in new[] { theirs, ours })
        {
            Qemu.Io(path, "write 0 64k", "write 8M 4k");
        }

        Qemu.Img("bitmap", "--add", "-g", "512", theirs, "new");
        Qemu.Img("bitmap", "--merge", "fine", theirs, "new");
        Qemu.Img("bitmap", "--clear", theirs, "coarse");
        Qemu.Img("bitmap", "--enable", theirs, "off");
        Qemu.Img("bitmap", "--remove", theirs, "fine");
        using (var image = Qcow2Image.Open(ours, new Qcow2OpenOptions { Writable = true }))
        {
            image.AddBitmap("new", 512);
            image.MergeBitmap("new", "fine");
            image.ClearBitmap("coarse");
            image.EnableBitmap("off");
            image.RemoveBitmap("fine");
            image.PersistentBitmaps.Select(b => (b.Name, b.Granularity, b.Enabled)).ShouldBe([("coarse", 1L << 20, true), ("off", 65536L, true), ("new", 512L, true)]);
        }

        Qemu.AssertClean(ours);
        Qemu.InfoBitmapLines(ours).ShouldBe(Qemu.InfoBitmapLines(theirs));
        foreach (var bitmap in new[] { "coarse", "off", "new" })
        {
            Qemu.DirtyRanges(ours, bitmap).ShouldBe(Qemu.DirtyRanges(theirs, bitmap), bitmap);
        }
    }

    [Test]
    public void Refusals_carry_qemu_s_reasons()
    {
        var path = Twin("a.qcow2", 65536);
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true });
        Should.Throw<BitmapException>(() => image.AddBitmap("fine")).Message.ShouldBe("Bitmap already exists: fine");
        Should.Throw<BitmapException>(() => image.AddBitmap(string.Empty)).Message.ShouldBe("Bitmap name cannot be empty");
        Should.Throw<BitmapException>(() => image.AddBitmap("x", 1000)).Message.ShouldBe("Granularity must be power of 2 and at least 512");
        Should.Throw<BitmapException>(() => image.ClearBitmap("nope")).Message.ShouldBe("Dirty bitmap 'nope' not found");
        Should.Throw<BitmapException>(() => image.AddBitmap(new string('x', 1024))).Message.ShouldEndWith("Name length exceeds maximum (1023 characters)");

        var other = PathOf("small.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", other, "32M");
        Qemu.Img("bitmap", "--add", other, "b");
        using var small = Qcow2Image.Open(other);
        Should.Throw<BitmapException>(() => image.MergeBitmap("fine", "b", small)).Message
            .ShouldBe("Bitmaps are of different sizes (destination size is 67108864, source size is 33554432) and can't be merged");
    }

    [Test]
    public void A_v2_image_cannot_hold_bitmaps()
    {
        var path = PathOf("v2.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", path, "1M");
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true });
        Should.Throw<BitmapException>(() => image.AddBitmap("x")).Message.ShouldEndWith("Cannot store dirty bitmaps in qcow2 v2 files");
    }

    [Test]
    public void A_new_image_gets_bitmaps_qemu_tracks_on()
    {
        var path = PathOf("new.qcow2");
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize }))
        {
            image.AddBitmap("backup-1");
            image.Write(3 << 20, new byte[100]);
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "write 5M 64k");
        Qemu.DirtyRanges(path, "backup-1").ShouldBe([(3L << 20, 65536L), (5L << 20, 65536L)]);
    }

    [Test]
    public void A_hostile_bitmap_directory_is_refused_for_writing_and_still_read()
    {
        var path = PathOf("dupes.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "16M");
        Qemu.Img("bitmap", "--add", path, "a");
        Qemu.Img("bitmap", "--add", path, "b");
        long nameOffset;
        using (var image = Qcow2Image.Open(path))
        {
            nameOffset = image.Header.Bitmaps!.DirectoryOffset + image.Bitmaps[0].StoredLength + 24;
        }

        using (var file = File.OpenWrite(path))
        {
            file.Position = nameOffset;
            file.WriteByte((byte)'a'); // two bitmaps named "a": QEMU cannot load them either
        }

        var before = File.ReadAllBytes(path);
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true })).Message.ShouldContain("two bitmaps are named 'a'");
        File.ReadAllBytes(path).ShouldBe(before, "a refused open writes nothing");
        using var readOnly = Qcow2Image.Open(path);
        readOnly.PersistentBitmaps.Select(b => b.Name).ShouldBe(["a", "a"]);
    }

    /// <summary>A qemu-img-made image with three bitmaps: enabled at two granularities, and one disabled.</summary>
    private string Twin(string name, int clusterSize)
    {
        var path = PathOf(name);
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", $"cluster_size={clusterSize}", path, DiskSize.ToString(CultureInfo.InvariantCulture));
        Qemu.Img("bitmap", "--add", "-g", "512", path, "fine");
        Qemu.Img("bitmap", "--add", "-g", "1M", path, "coarse");
        Qemu.Img("bitmap", "--add", "--disable", path, "off");
        return path;
    }

    private static List<Operation> RandomOperations(int seed, int count)
    {
        var random = new Random(seed);
        var operations = new List<Operation>(count);
        for (var i = 0; i < count; i++)
        {
            var offset = random.Next(3) == 0 ? random.NextInt64(DiskSize / 512) * 512 : random.NextInt64(DiskSize - 1);
            var length = Math.Min(DiskSize - offset, random.Next(4) switch { 0 => random.Next(1, 600), 1 => random.Next(1, 70_000), 2 => 65536, _ => random.Next(1, 3 << 20) });
            var kind = random.Next(6) switch { 0 => Kind.Zeroes, 1 => Kind.Discard, _ => Kind.Write };
            operations.Add(new Operation(kind, offset, length, (byte)random.Next(1, 255)));
        }

        return operations;
    }

    private enum Kind
    {
        Write,
        Zeroes,
        Discard,
    }

    private sealed record Operation(Kind Kind, long Offset, long Length, byte Pattern)
    {
        public string QemuIo => Kind switch
        {
            Kind.Write => $"write -P {Pattern} {Offset} {Length}",
            Kind.Zeroes => $"write -z {Offset} {Length}",
            _ => $"discard {Offset} {Length}",
        };

        public void Apply(Qcow2Image image)
        {
            switch (Kind)
            {
                case Kind.Write:
                    var data = new byte[Length];
                    Array.Fill(data, Pattern);
                    image.Write(Offset, data);
                    break;
                case Kind.Zeroes:
                    image.WriteZeroes(Offset, Length);
                    break;
                default:
                    image.Discard(Offset, Length);
                    break;
            }
        }
    }
}
