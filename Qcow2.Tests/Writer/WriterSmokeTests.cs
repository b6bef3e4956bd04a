using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

[TestFixture]
[Category("Interop")]
public class WriterSmokeTests : TempDirectoryFixture
{
    [Test]
    public void Create_write_close_is_clean_and_reads_back_in_qemu()
    {
        var path = PathOf("new.qcow2");
        var data = new byte[200_000];
        new Random(1).NextBytes(data);
        using (var image = Qcow2Image.Create(path, new Qcow2CreateOptions { Size = 64 << 20 }))
        {
            image.Write(12345, data);
            image.Write(40 << 20, data);
        }

        Qemu.AssertClean(path);
        var raw = PathOf("expected.raw");
        var expected = new byte[64 << 20];
        data.CopyTo(expected, 12345);
        data.CopyTo(expected, 40 << 20);
        File.WriteAllBytes(raw, expected);
        Qemu.Compare(path, raw).ExitCode.ShouldBe(0);
    }
}
