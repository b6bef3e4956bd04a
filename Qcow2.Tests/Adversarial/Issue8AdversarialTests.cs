using System.Security.Cryptography;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Adversarial;

/// <summary>
/// Issue 8 ("safety first") attacked as a hostile user or sysadmin would: each test is a way in
/// which a file in use, or an operation's own input, was written anyway, a policy was bypassed,
/// a deep chain crashed the process, or an error misled. qemu-img/qemu-io are the oracle.
/// </summary>
[TestFixture]
[Category("Interop")]
public class Issue8AdversarialTests : TempDirectoryFixture
{
    private const int ClusterSize = 65536;
    private const long Size = 1 << 20;

    // ---- two openers on one descriptor ---------------------------------------------------------

    [Test]
    public void Two_writable_images_over_one_FileStream_are_never_both_open()
    {
        var path = PathOf("img.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "1M");
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        using var first = Qcow2Image.Open(stream, new Qcow2OpenOptions { Writable = true, LeaveOpen = true });

        Should.Throw<ImageLockedException>(() => Qcow2Image.Open(stream, new Qcow2OpenOptions { Writable = true, LeaveOpen = true }).Dispose());
        Should.Throw<ImageLockedException>(() => Qcow2Image.Open(stream, new Qcow2OpenOptions { LeaveOpen = true }).Dispose());
        using var peek = Qcow2Image.Open(stream, new Qcow2OpenOptions { ForceShare = true, LeaveOpen = true });
    }

    [Test]
    public void Closing_one_image_over_a_shared_FileStream_keeps_the_writers_locks()
    {
        var path = PathOf("img.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "1M");
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        var peek = Qcow2Image.Open(stream, new Qcow2OpenOptions { ForceShare = true, LeaveOpen = true });
        using (var writer = Qcow2Image.Open(stream, new Qcow2OpenOptions { Writable = true, LeaveOpen = true }))
        {
            peek.Dispose(); // drops only what the reader held
            writer.Write(0, Pattern(0x61, ClusterSize));
            Qemu.ImgResult("info", path).Error.ShouldContain("Failed to get shared \"write\" lock");
            Qemu.IoUnchecked(path, "write -P 0x62 0 64k").Error.ShouldContain("lock");
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x61 0 64k");
    }

    // ---- helpers -------------------------------------------------------------------------------

    private string RawFile(string name, byte pattern)
    {
        var path = PathOf(name);
        Qemu.Img("create", "-f", "raw", path, "1M");
        Qemu.IoFormat("raw", path, $"write -P 0x{pattern:x2} 0 64k");
        return path;
    }

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    private static byte[] Pattern(byte value, int length) => Enumerable.Repeat(value, length).ToArray();

    /// <summary>c00000 (0x5a in its first sector) under <paramref name="depth"/> overlays, each a patched copy of one template.</summary>
    private string CreateChain(int depth)
    {
        string Name(int i) => $"c{i:D5}.qcow2";
        var bottom = PathOf(Name(0));
        using (var image = Qcow2Image.Create(bottom, new Qcow2CreateOptions { Size = Size }))
        {
            image.Write(0, Pattern(0x5a, 512));
        }

        var first = PathOf(Name(1));
        using (Qcow2Image.Create(first, new Qcow2CreateOptions { Size = Size, BackingFile = Name(0), BackingFormat = "qcow2", OpenOptions = new() { BackingFiles = BackingFileMode.Ignore } }))
        {
        }

        var template = File.ReadAllBytes(first);
        var at = template.AsSpan().IndexOf(System.Text.Encoding.ASCII.GetBytes(Name(0)));
        for (var i = 2; i <= depth; i++)
        {
            var copy = (byte[])template.Clone();
            System.Text.Encoding.ASCII.GetBytes(Name(i - 1)).CopyTo(copy, at);
            File.WriteAllBytes(PathOf(Name(i)), copy);
        }

        return PathOf(Name(depth));
    }
}
