using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Streams;

/// <summary>The contract for a read-only <see cref="Qcow2Stream"/> over an image qemu-img converted.</summary>
[TestFixture]
[Category("Interop")]
public class Qcow2StreamContractTests : StreamContractTests
{
    private string _image = string.Empty;

    [SetUp]
    public void MakeImage()
    {
        var raw = PathOf("content.raw");
        File.WriteAllBytes(raw, Content);
        _image = PathOf("content.qcow2");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", raw, _image);
    }

    protected override Stream OpenStream() => Qcow2Image.Open(_image).OpenStream(leaveOpen: false);

    [Test]
    public void Leave_open_keeps_the_image_usable()
    {
        using var image = Qcow2Image.Open(_image);
        using (var stream = image.OpenStream(leaveOpen: true))
        {
            stream.ReadByte().ShouldBe(Content[0]);
        }

        image.Size.ShouldBe(ContentLength);
        image.Content.ReadByte().ShouldBe(Content[0]);
    }

    [Test]
    public void A_read_only_stream_cannot_write()
    {
        using var stream = OpenStream();
        stream.CanWrite.ShouldBeFalse();
        Should.Throw<NotSupportedException>(() => stream.Write(new byte[1], 0, 1));
    }

    [Test]
    public void Concurrent_readers_each_see_the_content()
    {
        using var image = Qcow2Image.Open(_image);
        Parallel.For(0, 8, i =>
        {
            using var stream = image.OpenStream();
            var copy = new MemoryStream();
            stream.CopyTo(copy, 4096 + (i * 1000));
            copy.ToArray().ShouldBe(Content);
        });
    }
}
