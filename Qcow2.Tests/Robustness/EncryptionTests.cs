using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Robustness;

/// <summary>Encrypted images: metadata is readable (like qemu-img info), guest data is refused clearly.</summary>
[TestFixture]
[Category("Interop")]
public class EncryptionTests : TempDirectoryFixture
{
    [TestCase("luks", EncryptionMethod.Luks)]
    [TestCase("aes", EncryptionMethod.Aes)]
    public void Encrypted_image_reports_info_but_refuses_guest_data(string format, EncryptionMethod method)
    {
        var path = PathOf($"{format}.qcow2");
        CreateEncrypted(path, format);

        using (var image = Qcow2Image.Open(path))
        {
            image.Info.Encryption.ShouldBe(method);
            image.Size.ShouldBe(1 << 20);
            Should.Throw<NotSupportedException>(() => image.Read(0, new byte[512])).Message.ShouldContain("encrypted");
        }

        Should.Throw<NotSupportedException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true })).Message.ShouldContain("encrypted");
        CliRunner.Run("info", path).Output.ShouldContain("encrypted: yes");
    }

    private static void CreateEncrypted(string path, string format)
    {
        var options = $"encrypt.format={format},encrypt.key-secret=sec0" + (format == "luks" ? ",encrypt.iter-time=50" : string.Empty);
        for (var attempt = 1; ; attempt++)
        {
            var result = Qemu.ImgResult("create", "-f", "qcow2", "--object", "secret,id=sec0,data=123456", "-o", options, path, "1M");
            // QEMU's PBKDF timing loop sometimes fails on a busy machine; that is QEMU's problem, not ours.
            if (result.ExitCode == 0 || attempt == 10 || !result.Error.Contains("Unable to get accurate CPU usage", StringComparison.Ordinal))
            {
                result.ExitCode.ShouldBe(0, result.Error);
                return;
            }
        }
    }
}
