using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Streams;

/// <summary>
/// A stream handed to a disk library (DiscUtils' <c>new Raw.Disk(stream, Ownership.Dispose)</c>) is
/// often the only thing its user ever disposes: what was written through it must then be on disk
/// and the image consistent, with or without the stream owning its image.
/// </summary>
[TestFixture]
[Category("Interop")]
public class StreamOwnershipTests : TempDirectoryFixture
{
    private const long DiskSize = 8L << 20;

    [Test]
    public void A_created_stream_that_owns_its_image_is_the_only_thing_disposed()
    {
        var path = PathOf("owned.qcow2");
        var data = Pattern(0x3c, 200_000);
        using (var stream = Qcow2Stream.Create(path, new Qcow2CreateOptions { Size = DiskSize }))
        {
            stream.SetLength(stream.Length); // DiscUtils' Raw.Disk.Initialize does this
            stream.Position = 1 << 20;
            stream.Write(data);
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x3c 1M 200000", "read -P 0 0 1M");
        using var reopened = Qcow2Stream.Open(path);
        reopened.Length.ShouldBe(DiskSize);
        reopened.CanWrite.ShouldBeFalse();
    }

    [Test]
    public void An_opened_stream_that_owns_its_image_writes_durably()
    {
        var path = PathOf("opened.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "8M");
        using (var stream = Qcow2Stream.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            stream.Position = 4096;
            stream.Write(Pattern(0x5d, 70_000));
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x5d 4096 70000");
    }

    [Test]
    public void Disposing_a_stream_that_leaves_its_image_open_makes_its_writes_durable()
    {
        // The pattern from issue 8: Create(...).OpenStream() given away, the image itself never disposed.
        var path = PathOf("left-open.qcow2");
        var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize });
        try
        {
            var stream = image.OpenStream();
            stream.SetLength(stream.Length);
            stream.Position = 3 << 20;
            stream.Write(Pattern(0x6e, 131_072));
            stream.Dispose();

            // What is on disk now, while the image is still open: a copy checks clean and holds the data.
            var copy = PathOf("copy.qcow2");
            File.Copy(path, copy);
            Qemu.AssertClean(copy);
            Qemu.Io(copy, "read -P 0x6e 3M 128k");
        }
        finally
        {
            image.Dispose();
        }
    }

    [Test]
    public void Flushing_a_stream_makes_its_writes_durable()
    {
        var path = PathOf("flushed.qcow2");
        using var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = DiskSize });
        using var stream = image.OpenStream();
        stream.Write(Pattern(0x7f, 65_536));
        stream.Flush();
        var copy = PathOf("copy.qcow2");
        File.Copy(path, copy);
        Qemu.AssertClean(copy);
        Qemu.Io(copy, "read -P 0x7f 0 64k");
    }

    [Test]
    public void A_stream_whose_image_was_disposed_first_disposes_quietly()
    {
        var image = Qcow2Image.Create(PathOf("first.qcow2"), new Qcow2CreateOptions { Size = DiskSize });
        var stream = image.OpenStream();
        stream.WriteByte(1);
        image.Dispose();
        Should.NotThrow(stream.Dispose);
    }

    [Test]
    public void Set_length_to_another_length_names_the_way_to_resize()
    {
        using var stream = Qcow2Stream.Create(PathOf("resize.qcow2"), new Qcow2CreateOptions { Size = DiskSize });
        Should.Throw<NotSupportedException>(() => stream.SetLength(DiskSize * 2)).Message.ShouldContain("Resize");
        stream.Length.ShouldBe(DiskSize);
    }

    private static byte[] Pattern(byte value, int length) => Enumerable.Repeat(value, length).ToArray();
}
