using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;
using QcowDedup.Qcow2.Tests.Interop;

namespace QcowDedup.Qcow2.Tests.Robustness;

/// <summary>Feature bits with QEMU's semantics (spec "Header", qcow2_do_open).</summary>
[TestFixture]
[Category("Interop")]
public class FeatureBitTests : TempDirectoryFixture
{
    private string _image = string.Empty;

    [SetUp]
    public void MakeImage()
    {
        var builder = new ImageBuilder(Directory);
        _image = builder.Create("image.qcow2", 4 << 20);
        builder.Io(_image, "write -P 0x5a 0 64k");
    }

    [Test]
    public void Unknown_incompatible_bit_is_refused_like_qemu()
    {
        ImagePatch.EditHeader(_image, h => h with { Header = h.Header with { Incompatible = h.Header.Incompatible | (IncompatibleFeatures)(1UL << 9) } });

        var error = Should.Throw<NotSupportedException>(() => Qcow2Image.Open(_image));
        error.Message.ShouldContain("Unknown incompatible feature: 200");
        Qemu.ImgResult("info", _image).Error.ShouldContain("Unknown incompatible feature: 200");
    }

    [Test]
    public void Unknown_incompatible_bit_is_named_from_the_feature_name_table()
    {
        ImagePatch.EditHeader(_image, h => h with
        {
            Header = h.Header with { Incompatible = h.Header.Incompatible | (IncompatibleFeatures)(1UL << 9) },
            FeatureNames = [.. h.FeatureNames, new FeatureName(FeatureKind.Incompatible, 9, "quantum clusters")],
        });

        Should.Throw<NotSupportedException>(() => Qcow2Image.Open(_image)).Message.ShouldContain("quantum clusters");
    }

    [Test]
    public void Corrupt_bit_allows_reading_but_refuses_read_write()
    {
        ImagePatch.EditHeader(_image, h => h with { Header = h.Header with { Incompatible = h.Header.Incompatible | IncompatibleFeatures.Corrupt } });

        using (var image = Qcow2Image.Open(_image))
        {
            image.Info.Corrupt.ShouldBeTrue();
            var buffer = new byte[4];
            image.Read(0, buffer);
            buffer.ShouldAllBe(b => b == 0x5a);
        }

        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(_image, new Qcow2OpenOptions { Writable = true })).Message.ShouldContain("corrupt bit");
    }

    [Test]
    public void Dirty_bit_is_readable()
    {
        ImagePatch.EditHeader(_image, h => h with { Header = h.Header with { Incompatible = h.Header.Incompatible | IncompatibleFeatures.Dirty } });
        using var image = Qcow2Image.Open(_image);
        image.Info.Dirty.ShouldBeTrue();
    }

    [Test]
    public void Unknown_compatible_and_autoclear_bits_and_extensions_show_in_info_and_do_not_stop_reading()
    {
        ImagePatch.EditHeader(_image, h => h with
        {
            Header = h.Header with
            {
                Compatible = h.Header.Compatible | (CompatibleFeatures)(1UL << 7),
                Autoclear = h.Header.Autoclear | (AutoclearFeatures)(1UL << 5),
            },
            OtherExtensions = [new HeaderExtension(0x12345678, "HELLOEXT"u8.ToArray())],
        });

        using var image = Qcow2Image.Open(_image);
        var info = image.Info;
        info.UnknownCompatibleBits.ShouldBe(1UL << 7);
        info.UnknownAutoclearBits.ShouldBe(1UL << 5);
        info.UnknownExtensions.ShouldHaveSingleItem().Type.ShouldBe(0x12345678u);
        var buffer = new byte[65536];
        image.Read(0, buffer);
        buffer.ShouldAllBe(b => b == 0x5a);

        var cli = CliRunner.Run("info", _image);
        cli.ExitCode.ShouldBe(0);
        cli.Output.ShouldContain("unknown compatible features: 0x80");
        cli.Output.ShouldContain("unknown autoclear features: bit 5");
        cli.Output.ShouldContain("unknown header extension: 0x12345678 (8 bytes)");
    }
}
