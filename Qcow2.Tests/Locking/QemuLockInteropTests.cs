using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Locking;

/// <summary>
/// QEMU and this library see each other's image locks both ways, as two QEMU processes do:
/// nobody writes an image another writer holds, and nobody reads without force-share what another
/// may be changing. Every writer's acknowledged data survives, and qemu-img check stays clean.
/// </summary>
[TestFixture]
[Category("Interop")]
public class QemuLockInteropTests : TempDirectoryFixture
{
    private const int ClusterSize = 65536;

    [Test]
    public void While_qemu_io_writes_the_image_our_writable_open_fails_naming_the_lock()
    {
        var path = CreateImage();
        using (var qemu = QemuIoSession.Open(path))
        {
            qemu.Run("write -P 0x11 0 64k").ShouldContain("wrote 65536/65536");
            var error = Should.Throw<ImageLockedException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }));
            error.Message.ShouldStartWith("Failed to get \"write\" lock");
            error.Permission.ShouldBe("write");
            error.Shared.ShouldBeFalse();
            qemu.Run("write -P 0x22 64k 64k").ShouldContain("wrote 65536/65536");
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x11 0 64k", "read -P 0x22 64k 64k");
    }

    [Test]
    public void While_qemu_io_writes_the_image_our_reader_needs_force_share()
    {
        var path = CreateImage();
        using var qemu = QemuIoSession.Open(path);
        qemu.Run("write -P 0x33 0 64k");
        qemu.Run("flush");

        var error = Should.Throw<ImageLockedException>(() => Qcow2Image.Open(path));
        error.Message.ShouldStartWith("Failed to get shared \"write\" lock");
        error.Shared.ShouldBeTrue();

        using var shared = Qcow2Image.Open(path, new Qcow2OpenOptions { ForceShare = true });
        var buffer = new byte[ClusterSize];
        shared.Read(0, buffer);
        buffer.ShouldAllBe(b => b == 0x33);
        qemu.Run("write -P 0x44 64k 64k").ShouldContain("wrote"); // our force-shared reader does not stop QEMU writing
    }

    [Test]
    public void Force_share_is_refused_for_writing()
    {
        var path = CreateImage();
        Should.Throw<ArgumentException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, ForceShare = true }))
            .Message.ShouldContain("force-share=on can only be used with read-only images");
    }

    [Test]
    public void While_we_write_the_image_qemu_refuses_to_open_it_except_with_force_share()
    {
        var path = CreateImage();
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, Pattern(0x55, ClusterSize));
            image.Flush();

            var info = Qemu.ImgResult("info", path);
            info.ExitCode.ShouldBe(1);
            info.Error.ShouldContain("Failed to get shared \"write\" lock");

            var write = Qemu.ImgResult("check", path);
            write.ExitCode.ShouldNotBe(0);
            write.Error.ShouldContain("lock");

            var io = Qemu.IoUnchecked(path, "write -P 0x66 0 64k");
            io.Error.ShouldContain("Failed to get \"write\" lock");

            Qemu.ImgResult("info", "-U", path).ExitCode.ShouldBe(0);
            image.Write(ClusterSize, Pattern(0x77, ClusterSize));
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x55 0 64k", "read -P 0x77 64k 64k");
    }

    [Test]
    public void A_second_writer_or_reader_of_ours_is_refused_while_we_write()
    {
        var path = CreateImage();
        using (var writer = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            writer.Write(0, Pattern(0x12, ClusterSize));
            Should.Throw<ImageLockedException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true })).Permission.ShouldBe("write");
            Should.Throw<ImageLockedException>(() => Qcow2Image.Open(path)).Shared.ShouldBeTrue();
            Should.Throw<ImageLockedException>(() => FileStorage.Open(path, writable: true));
            using (Qcow2Image.Open(path, new Qcow2OpenOptions { ForceShare = true }))
            {
            }

            writer.Write(ClusterSize, Pattern(0x13, ClusterSize));
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x12 0 64k", "read -P 0x13 64k 64k");
        using var again = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }); // the locks went with the first writer
    }

    [Test]
    public void A_second_process_of_ours_cannot_write_while_we_write()
    {
        var path = CreateImage();
        using (var writer = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            writer.Write(0, Pattern(0x31, ClusterSize));
            var other = Qemu.Run(Dotnet, [typeof(QcowDedup.Cli.Program).Assembly.Location, "io", "-c", "write -P 0x32 0 64k", path]);
            other.ExitCode.ShouldBe(1, other.Error);
            other.Error.ShouldContain("Failed to get \"write\" lock");
            writer.Write(ClusterSize, Pattern(0x33, ClusterSize));
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x31 0 64k", "read -P 0x33 64k 64k");
    }

    [Test]
    public void An_image_opened_from_a_FileStream_is_locked_until_disposed_even_when_the_stream_stays_open()
    {
        var path = CreateImage();
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        using (var image = Qcow2Image.Open(stream, new Qcow2OpenOptions { Writable = true, LeaveOpen = true }))
        {
            image.Write(0, Pattern(0x41, ClusterSize));
            Qemu.ImgResult("info", path).Error.ShouldContain("Failed to get shared \"write\" lock");
        }

        Qemu.ImgResult("info", path).ExitCode.ShouldBe(0);
        stream.CanRead.ShouldBeTrue();
    }

    [Test]
    public void Our_reader_and_qemus_reader_coexist_and_both_keep_writers_out()
    {
        var path = CreateImage();
        Qemu.Io(path, "write -P 0x21 0 64k");
        using var ours = Qcow2Image.Open(path);
        using (var qemu = QemuIoSession.Open(path, "-r"))
        {
            qemu.Run("read -P 0x21 0 64k").ShouldNotContain("Pattern verification failed");
            using var second = Qcow2Image.Open(path);
            Qemu.ImgResult("info", path).ExitCode.ShouldBe(0);
            Should.Throw<ImageLockedException>(() => Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }));
        }

        Qemu.IoUnchecked(path, "write 0 512").Error.ShouldContain("Failed to get \"write\" lock");
    }

    [Test]
    public void Locking_off_ignores_locks_as_qemus_locking_off_does()
    {
        var path = CreateImage();
        using var qemu = QemuIoSession.Open(path, "-r");
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, Locking = FileLocking.Off });
        image.IsWritable.ShouldBeTrue();
    }

    [Test]
    public void Locks_are_QEMUs_bytes()
    {
        var path = CreateImage();
        using (Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            LockedBytes(path).ShouldBe([100, 101, 103, 201, 203]);
        }

        using (Qcow2Image.Open(path))
        {
            LockedBytes(path).ShouldBe([100, 201, 203]);
        }

        using (Qcow2Image.Open(path, new Qcow2OpenOptions { ForceShare = true }))
        {
            LockedBytes(path).ShouldBe([100]);
        }

        LockedBytes(path).ShouldBeEmpty();
    }

    /// <summary>The bytes of the file that /proc/locks lists as OFD-locked (what QEMU publishes).</summary>
    private static List<long> LockedBytes(string path)
    {
        Posix.TryStat(path, out var status).ShouldBeTrue();
        var inode = status.Identity.Inode;
        var bytes = new List<long>();
        foreach (var line in File.ReadLines("/proc/locks"))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length >= 8 && fields[1] == "OFDLCK" && fields[5].EndsWith($":{inode}", StringComparison.Ordinal))
            {
                for (var b = long.Parse(fields[6], System.Globalization.CultureInfo.InvariantCulture); b <= long.Parse(fields[7], System.Globalization.CultureInfo.InvariantCulture); b++)
                {
                    bytes.Add(b);
                }
            }
        }

        bytes.Sort();
        return bytes;
    }

    private static string Dotnet => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";

    private string CreateImage()
    {
        var path = PathOf("disk.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "16M");
        return path;
    }

    private static byte[] Pattern(byte value, int length) => Enumerable.Repeat(value, length).ToArray();
}
