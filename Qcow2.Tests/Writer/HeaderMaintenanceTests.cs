using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>Header rewrites preserve what they must; read-write open behaves like QEMU's.</summary>
[TestFixture]
[Category("Interop")]
public class HeaderMaintenanceTests : TempDirectoryFixture
{
    [Test]
    public void Read_write_open_clears_unknown_autoclear_bits_and_keeps_unknown_extensions_fields_and_compatible_bits()
    {
        var path = new ImageBuilder(Directory).Create("image.qcow2", 8 << 20);
        ImagePatch.EditHeader(path, h => h with
        {
            Header = h.Header with
            {
                HeaderLength = 120,
                UnknownAdditionalFields = new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 },
                Compatible = h.Header.Compatible | (CompatibleFeatures)(1UL << 7),
                Autoclear = h.Header.Autoclear | (AutoclearFeatures)(1UL << 5),
            },
            OtherExtensions = [new HeaderExtension(0x12345678, "HELLOEXT"u8.ToArray())],
        });

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, new byte[] { 1, 2, 3 });
        }

        var header = ImagePatch.ReadHeader(path);
        ((ulong)header.Header.Autoclear & (1UL << 5)).ShouldBe(0UL);
        ((ulong)header.Header.Compatible & (1UL << 7)).ShouldNotBe(0UL);
        header.Header.HeaderLength.ShouldBe(120);
        header.Header.UnknownAdditionalFields.ToArray().ShouldBe(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
        header.OtherExtensions.ShouldHaveSingleItem().Data.ToArray().ShouldBe("HELLOEXT"u8.ToArray());
        Qemu.AssertClean(path);
    }

    [Test]
    public void Repairing_leaks_also_frees_refcounts_past_the_end_of_the_file()
    {
        // A crash can persist a refcount increment while the cluster it allocated never reached
        // the disk. QEMU's check stops at the end of the file, so it only sees the leak once the
        // file grows over that cluster; our repair frees it at once.
        var path = new ImageBuilder(Directory).Create("beyond.qcow2", 8 << 20, "cluster_size=4096,refcount_bits=16");
        var length = new FileInfo(path).Length;
        var refcountBlock = (long)ImagePatch.ReadU64(path, (long)ImagePatch.ReadHeader(path).Header.RefcountTableOffset);
        var leaked = (length / 4096) + 3;
        ImagePatch.WriteBytes(path, refcountBlock + (leaked * 2), [0, 1]);
        Qemu.Check(path).Leaks.ShouldBe(0, "invisible to QEMU while past the end");

        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            var result = image.Check(CheckRepair.Leaks);
            result.LeaksFixed.ShouldBe(1);
            var data = new byte[4096];
            data.AsSpan().Fill(0x5c);
            for (var i = 0; i < 8; i++)
            {
                image.Write(i * 4096L, data);
            }
        }

        new FileInfo(path).Length.ShouldBeGreaterThan((leaked + 1) * 4096);
        Qemu.AssertClean(path);
    }

    [Test]
    public void Dirty_image_is_repaired_at_read_write_open()
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create("lazy.qcow2", 8 << 20, "lazy_refcounts=on");
        Qemu.IoUnchecked(path, "write -P 0x71 0 256k", "write -P 0x72 3M 64k", "flush", "abort");
        ImagePatch.ReadHeader(path).Header.Incompatible.HasFlag(IncompatibleFeatures.Dirty).ShouldBeTrue();
        Qemu.Check(path).Corruptions.ShouldBeGreaterThan(0); // refcounts were postponed, so they are wrong on disk
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Info.Dirty.ShouldBeFalse();
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x71 0 256k", "read -P 0x72 3M 64k");
    }

    [Test]
    public void Lazy_refcounts_set_the_dirty_bit_while_writing_and_clear_it_on_close()
    {
        var path = PathOf("lazy.qcow2");
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 8 << 20, LazyRefcounts = true }))
        {
            image.Write(0, new byte[70_000]);
            image.Write(1 << 20, Enumerable.Repeat((byte)3, 70_000).ToArray());
            image.Flush();
            ImagePatch.ReadHeader(path).Header.Incompatible.HasFlag(IncompatibleFeatures.Dirty).ShouldBeTrue();
        }

        ImagePatch.ReadHeader(path).Header.Incompatible.HasFlag(IncompatibleFeatures.Dirty).ShouldBeFalse();
        Qemu.AssertClean(path);
    }

    [Test]
    public void The_dirty_bit_covers_metadata_changes_until_the_next_flush()
    {
        var path = PathOf("window.qcow2");
        bool Dirty() => ImagePatch.ReadHeader(path).Header.Incompatible.HasFlag(IncompatibleFeatures.Dirty);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 8 << 20 }))
        {
            image.Write(0, Enumerable.Repeat((byte)1, 70_000).ToArray()); // allocates: refcounts change
            Dirty().ShouldBeTrue();
            image.Flush();
            Dirty().ShouldBeFalse(); // a crash now leaves nothing to repair
            image.Write(0, Enumerable.Repeat((byte)2, 4096).ToArray()); // in place: no metadata changes
            image.Flush();
            Dirty().ShouldBeFalse();
            image.Write(4 << 20, Enumerable.Repeat((byte)3, 4096).ToArray());
            Dirty().ShouldBeTrue();
        }

        Dirty().ShouldBeFalse();
        Qemu.AssertClean(path);
    }

    [Test]
    public void Changing_the_backing_file_rewrites_name_and_format()
    {
        var builder = new ImageBuilder(Directory);
        builder.Create("a.qcow2", 4 << 20);
        var b = builder.CreateRaw("b.raw", 4 << 20);
        builder.IoRaw(b, "write -P 0x5b 0 4k");
        var top = builder.Create("top.qcow2", 4 << 20, backing: "a.qcow2", backingFormat: "qcow2");
        using (var image = Qcow2Image.Open(top, new Qcow2OpenOptions { Writable = true }))
        {
            image.SetBackingFile("b.raw", "raw");
            var buffer = new byte[4096];
            image.Read(0, buffer);
            buffer.ShouldAllBe(x => x == 0x5b);
        }

        Qemu.Img("info", top).ShouldContain("backing file: b.raw");
        Qemu.Img("info", top).ShouldContain("backing file format: raw");
        Qemu.Io(top, "read -P 0x5b 0 4k");
        Qemu.AssertClean(top);
    }

    [Test]
    public void Writing_an_image_with_a_persistent_bitmap_records_the_write_and_leaves_it_consistent()
    {
        var builder = new ImageBuilder(Directory);
        var path = builder.Create("bitmap.qcow2", 8 << 20);
        Qemu.Img("bitmap", "--add", path, "tracked");
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, new byte[] { 1 });
        }

        Qemu.AssertClean(path);
        Qemu.Img("info", path).ShouldNotContain("in-use");
        Qemu.DirtyRanges(path, "tracked").ShouldBe([(0L, 65536L)]);
        Qemu.Io(path, "write -P 9 64k 4k");
        Qemu.DirtyRanges(path, "tracked").ShouldBe([(0L, 131072L)]);
    }
}
