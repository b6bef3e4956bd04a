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

    // ---- convert -U: the output's data file must not be a file the source reads ----------------

    [Test]
    public void Convert_with_force_share_never_creates_the_output_data_file_over_the_raw_source()
    {
        var source = RawFile("src.raw", 0x5c);
        var before = Hash(source);

        var result = CliRunner.Run("convert", "-U", "-O", "qcow2", "-o", $"data_file={source}", source, PathOf("dst.qcow2"));

        result.ExitCode.ShouldBe(1, result.Output);
        result.Error.ShouldContain("data file");
        Hash(source).ShouldBe(before);
    }

    [Test]
    public void Convert_with_force_share_never_creates_the_output_data_file_over_the_sources_backing_file()
    {
        var (basePath, top) = BaseWithOverlay();
        Qemu.Io(top, "write -P 0x22 64k 64k");
        var before = Hash(basePath);

        var result = CliRunner.Run("convert", "-U", "-O", "qcow2", "-o", "data_file=base.qcow2", top, PathOf("dst.qcow2"));

        result.ExitCode.ShouldBe(1, result.Output);
        Hash(basePath).ShouldBe(before);
        Qemu.AssertClean(top);
        Qemu.Io(top, "read -P 0x11 0 64k", "read -P 0x22 64k 64k");
    }

    // ---- create: the data file must not be the backing file (creating it empties it) ------------

    [Test]
    public void Create_never_empties_its_backing_file_named_as_its_data_file()
    {
        var backing = RawFile("base.raw", 0x33);
        var before = Hash(backing);

        Should.Throw<ArgumentException>(() => Qcow2Image.Create(PathOf("top.qcow2"), new Qcow2CreateOptions { Size = Size, BackingFile = "base.raw", BackingFormat = "raw", DataFile = backing }).Dispose())
            .Message.ShouldContain("backing file");
        Hash(backing).ShouldBe(before);

        var result = CliRunner.Run("create", "-f", "qcow2", "-o", "data_file=base.raw", "-b", backing, "-F", "raw", PathOf("cli.qcow2"));
        result.ExitCode.ShouldBe(1, result.Output);
        Hash(backing).ShouldBe(before);
    }

    [Test]
    public void Create_never_empties_a_file_below_its_backing_file_in_the_chain()
    {
        var (basePath, top) = BaseWithOverlay();
        var before = Hash(basePath);

        // base is top's backing file: made "over" top, it would be emptied, then found in a loop and deleted.
        var result = CliRunner.Run("create", "-f", "qcow2", "-b", top, "-F", "qcow2", basePath);
        result.ExitCode.ShouldBe(1, result.Output);
        result.Error.ShouldContain("backing chain");
        Hash(basePath).ShouldBe(before);

        Should.Throw<ArgumentException>(() => Qcow2Image.Create(basePath, new Qcow2CreateOptions { BackingFile = "top.qcow2", OpenOptions = new() { Locking = FileLocking.Off } }).Dispose());
        Hash(basePath).ShouldBe(before);

        // Nor as the new image's data file.
        Should.Throw<ArgumentException>(() => Qcow2Image.Create(PathOf("new.qcow2"), new Qcow2CreateOptions { BackingFile = "top.qcow2", DataFile = "base.qcow2" }).Dispose());
        Hash(basePath).ShouldBe(before);
        Qemu.Io(top, "read -P 0x11 0 64k");
    }

    // ---- Create over a FileStream: lock first, then empty --------------------------------------

    [Test]
    public void Create_over_a_FileStream_of_an_image_qemu_writes_leaves_it_untouched()
    {
        var path = PathOf("vm.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "1M");
        using (var qemu = QemuIoSession.Open(path))
        {
            qemu.Run("write -P 0x42 0 64k").ShouldContain("wrote");
            qemu.Run("flush");
            using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            {
                Should.Throw<ImageLockedException>(() => Qcow2Image.Create(new StreamStorage(stream, leaveOpen: true, path), new Qcow2CreateOptions { Size = Size }).Dispose());
            }

            qemu.Run("write -P 0x43 64k 64k").ShouldContain("wrote");
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x42 0 64k", "read -P 0x43 64k 64k");
    }

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

    // ---- predicate policy: it must judge the file really opened --------------------------------

    [Test]
    public void Predicate_policy_judges_the_data_file_really_opened_not_the_name_it_was_shown()
    {
        var images = PathOf("images");
        var home = PathOf("home");
        System.IO.Directory.CreateDirectory(images);
        System.IO.Directory.CreateDirectory(home);
        var upload = Path.Combine(images, "upload.qcow2");
        var previous = Environment.CurrentDirectory;
        try
        {
            // Made in home/, so qemu-img records the relative data file name; it exists only there.
            Environment.CurrentDirectory = home;
            Qemu.WorkingDirectory.Value = home;
            Qemu.Img("create", "-f", "qcow2", "-o", "data_file=secret.raw,data_file_raw=on", upload, "1M");
            Qemu.IoFormat("raw", Path.Combine(home, "secret.raw"), "write -P 0x77 0 64k");

            var seen = new List<string>();
            var policy = BackingFilePolicy.Where((_, full) => { seen.Add(full); return full.StartsWith(images + "/", StringComparison.Ordinal); }, "files under images/");
            Should.Throw<BackingFilePolicyException>(() => Qcow2Image.Open(upload, new Qcow2OpenOptions { BackingPolicy = policy }).Dispose());
            seen.ShouldContain(Path.Combine(home, "secret.raw"));
        }
        finally
        {
            Environment.CurrentDirectory = previous;
            Qemu.WorkingDirectory.Value = Directory;
        }
    }

    // ---- deep chains on small stacks -----------------------------------------------------------

    [Test]
    public void Thousand_deep_chain_opened_on_one_thread_closes_on_a_small_stack_without_crashing()
    {
        var top = CreateChain(1000);
        var image = Qcow2Image.Open(top);
        Exception? error = null;
        var thread = new Thread(
            () =>
            {
                try
                {
                    image.Dispose();
                }
                catch (Exception caught)
                {
                    error = caught;
                }
            },
            maxStackSize: 128 * 1024);
        thread.Start();
        thread.Join();
        error.ShouldBeNull();

        // Every layer's file was closed: a writer may open the bottom one now.
        using var bottom = Qcow2Image.Open(PathOf("c00000.qcow2"), new Qcow2OpenOptions { Writable = true });
    }

    // ---- clear errors --------------------------------------------------------------------------

    [Test]
    public void Directory_named_as_backing_file_is_reported_as_a_directory_not_as_missing()
    {
        System.IO.Directory.CreateDirectory(PathOf("dir"));
        var top = PathOf("top.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-u", "-b", "dir", "-F", "raw", top, "1M");

        var error = Should.Throw<IOException>(() => Qcow2Image.Open(top).Dispose());
        error.Message.ShouldContain("a directory");
        error.Message.ShouldNotContain("does not exist");
        error.ShouldNotBeOfType<FileNotFoundException>();

        var result = CliRunner.Run("map", top);
        result.ExitCode.ShouldBe(1);
        result.Error.ShouldContain("a directory");
    }

    [Test]
    public void Error_for_a_backing_file_name_with_a_newline_stays_one_line()
    {
        var top = PathOf("top.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-u", "-b", "evil\nqcow2: everything is fine", "-F", "raw", top, "1M");

        var result = CliRunner.Run("map", top);

        result.ExitCode.ShouldBe(1);
        result.Error.TrimEnd('\n').ShouldNotContain("\n");
        result.Error.ShouldContain("evil\\nqcow2: everything is fine");
    }

    [Test]
    public void Backing_file_name_with_a_NUL_names_itself_and_its_image()
    {
        var top = PathOf("top.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-u", "-b", "base.rawXX", "-F", "raw", top, "1M");
        var bytes = File.ReadAllBytes(top);
        var at = bytes.AsSpan().IndexOf("base.rawXX"u8);
        bytes[at + 8] = 0;
        bytes[at + 9] = 0x1b;
        File.WriteAllBytes(top, bytes);

        var result = CliRunner.Run("map", top);

        result.ExitCode.ShouldBe(1);
        result.Error.ShouldBe($"qcow2: The file name 'base.raw\\x00\\x1b' named by {top} contains a NUL character, which no file name can hold.\n");
    }

    // ---- ".." after a linked directory: the file checked must be the file written --------------

    [Test]
    public void Convert_with_force_share_never_truncates_the_source_spelled_through_a_linked_directory_and_dot_dot()
    {
        var tree = PathOf("tree");
        var elsewhere = PathOf("elsewhere");
        System.IO.Directory.CreateDirectory(tree);
        System.IO.Directory.CreateDirectory(Path.Combine(elsewhere, "deeper"));
        File.CreateSymbolicLink(Path.Combine(tree, "link"), Path.Combine(elsewhere, "deeper"));
        File.WriteAllText(Path.Combine(elsewhere, "src.raw"), "decoy"); // where the kernel resolves tree/link/../src.raw
        var source = Path.Combine(tree, "src.raw");
        File.Copy(RawFile("template.raw", 0x5c), source);
        var before = Hash(source);

        // tree/link/../src.raw is elsewhere/src.raw to the kernel (and so to us): not the source.
        var result = CliRunner.Run("convert", "-U", "-O", "raw", source, Path.Combine(tree, "link", "..", "src.raw"));

        result.ExitCode.ShouldBe(0, result.Error);
        Hash(source).ShouldBe(before);
        Hash(Path.Combine(elsewhere, "src.raw")).ShouldBe(before, "the output went where qemu-img would put it");
        CliRunner.Run("convert", "-U", "-O", "raw", source, Path.Combine(tree, "link", "..", "..", "tree", "src.raw")).ExitCode.ShouldBe(1, "this spelling is the source");
        Hash(source).ShouldBe(before);
    }

    [Test]
    public void Dot_dot_after_a_linked_directory_is_resolved_as_the_kernel_resolves_it()
    {
        var tree = PathOf("tree");
        var elsewhere = PathOf("elsewhere");
        System.IO.Directory.CreateDirectory(tree);
        System.IO.Directory.CreateDirectory(Path.Combine(elsewhere, "deeper"));
        File.CreateSymbolicLink(Path.Combine(tree, "link"), Path.Combine(elsewhere, "deeper"));
        var source = RawFile("src.raw", 0x5c);

        var result = CliRunner.Run("convert", "-O", "raw", source, Path.Combine(tree, "link", "..", "out.raw"));

        result.ExitCode.ShouldBe(0, result.Error);
        File.Exists(Path.Combine(elsewhere, "out.raw")).ShouldBeTrue("qemu-img and the shell put it here");
        File.Exists(Path.Combine(tree, "out.raw")).ShouldBeFalse();
    }

    // ---- helpers -------------------------------------------------------------------------------

    /// <summary>base.qcow2 (0x11 in its first cluster) under top.qcow2.</summary>
    private (string Base, string Top) BaseWithOverlay()
    {
        var basePath = PathOf("base.qcow2");
        Qemu.Img("create", "-f", "qcow2", basePath, "1M");
        Qemu.Io(basePath, "write -P 0x11 0 64k");
        var top = PathOf("top.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-b", basePath, "-F", "qcow2", top);
        return (basePath, top);
    }

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
