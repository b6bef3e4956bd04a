using System.Diagnostics;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Chains;

/// <summary>
/// The backing file policy decides which files an image may open by itself, whatever its header
/// says: any regular file (QEMU's default), files in one directory tree, none, or the caller's
/// choice. Devices and FIFOs are refused under every policy, without hanging.
/// </summary>
[TestFixture]
public class BackingPolicyTests : TempDirectoryFixture
{
    private const long Size = 1 << 20;

    public enum Policy
    {
        Any,
        None,
        Confined,
        Predicate,
    }

    private string Tree => PathOf("tree");

    private string Outside => PathOf("outside");

    [SetUp]
    public void MakeTrees()
    {
        System.IO.Directory.CreateDirectory(Path.Combine(Tree, "sub"));
        System.IO.Directory.CreateDirectory(Outside);
    }

    [Test]
    public void Absolute_path_inside_the_tree([Values] Policy policy)
    {
        var basePath = CreateBase(Path.Combine(Tree, "base.qcow2"));
        var top = CreateOverlay(Path.Combine(Tree, "sub", "top.qcow2"), basePath);
        AssertOpens(top, policy, allowed: policy != Policy.None);
    }

    [Test]
    public void Absolute_path_outside_the_tree([Values] Policy policy)
    {
        var basePath = CreateBase(Path.Combine(Outside, "base.qcow2"));
        var top = CreateOverlay(Path.Combine(Tree, "top.qcow2"), basePath);
        AssertOpens(top, policy, allowed: policy == Policy.Any);
    }

    [Test]
    public void Dot_dot_escape_from_the_tree([Values] Policy policy)
    {
        CreateBase(Path.Combine(Outside, "base.qcow2"));
        var top = CreateOverlay(Path.Combine(Tree, "sub", "top.qcow2"), "../../outside/base.qcow2");
        AssertOpens(top, policy, allowed: policy == Policy.Any);
    }

    [Test]
    public void Dot_dot_that_stays_inside_the_tree([Values] Policy policy)
    {
        CreateBase(Path.Combine(Tree, "base.qcow2"));
        var top = CreateOverlay(Path.Combine(Tree, "sub", "top.qcow2"), "../base.qcow2");
        AssertOpens(top, policy, allowed: policy != Policy.None);
    }

    [Test]
    public void Symbolic_link_out_of_the_tree([Values] Policy policy)
    {
        var basePath = CreateBase(Path.Combine(Outside, "base.qcow2"));
        File.CreateSymbolicLink(Path.Combine(Tree, "link.qcow2"), basePath);
        var top = CreateOverlay(Path.Combine(Tree, "top.qcow2"), "link.qcow2");

        // A predicate is shown the path with links resolved, so it sees where the link leads.
        AssertOpens(top, policy, allowed: policy is Policy.Any);
    }

    [Test]
    public void Device_as_raw_backing_file_is_refused([Values] Policy policy)
    {
        var top = CreateOverlay(Path.Combine(Tree, "top.qcow2"), "/dev/zero", "raw");
        var error = Should.Throw<Exception>(() => Open(top, policy).Dispose());
        error.Message.ShouldContain(policy is Policy.Any ? "character device" : "/dev/zero");
    }

    [Test]
    public void Device_opens_only_when_the_policy_allows_special_files()
    {
        var top = CreateOverlay(Path.Combine(Tree, "top.qcow2"), "/dev/zero", "raw");
        using var image = Qcow2Image.Open(top, new Qcow2OpenOptions { BackingPolicy = BackingFilePolicy.AnyRegularFile.WithNonRegularFiles() });
        image.BackingChain[1].Path.ShouldBe("/dev/zero");
    }

    [Test]
    [CancelAfter(20_000)]
    public void Fifo_as_backing_file_is_refused_without_hanging([Values] Policy policy)
    {
        var fifo = Path.Combine(Tree, "pipe");
        Process.Start("mkfifo", fifo)!.WaitForExit();
        var top = CreateOverlay(Path.Combine(Tree, "top.qcow2"), "pipe", format: null);
        var timer = Stopwatch.StartNew();
        var error = Should.Throw<Exception>(() => Open(top, policy).Dispose());
        timer.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(10));
        error.Message.ShouldContain(policy is Policy.None ? "does not allow" : "FIFO");
    }

    [Test]
    public void Loop_is_reported([Values] Policy policy)
    {
        var a = Path.Combine(Tree, "a.qcow2");
        var b = Path.Combine(Tree, "b.qcow2");
        CreateOverlay(a, "b.qcow2");
        CreateOverlay(b, "a.qcow2");
        var error = Should.Throw<Exception>(() => Open(a, policy).Dispose());
        error.Message.ShouldContain(policy is Policy.None ? "does not allow" : "loop");
    }

    [Test]
    public void Loop_through_a_hard_link_is_reported()
    {
        var a = Path.Combine(Tree, "a.qcow2");
        CreateOverlay(a, "alias.qcow2");
        Process.Start("ln", [a, Path.Combine(Tree, "alias.qcow2")])!.WaitForExit();
        Should.Throw<InvalidDataException>(() => Qcow2Image.Open(a).Dispose()).Message.ShouldContain("loop");
    }

    [Test]
    public void Thousand_deep_chain_opens_and_reads_through([Values] Policy policy)
    {
        var top = CreateChain(1000);
        if (policy == Policy.None)
        {
            Should.Throw<BackingFilePolicyException>(() => Open(top, policy).Dispose());
            return;
        }

        using var opened = Open(top, policy);
        opened.BackingChain.Count.ShouldBe(1001);
        var sector = new byte[512];
        opened.Read(0, sector);
        sector.ShouldAllBe(b => b == 0x5a);
        opened.GetMap(0, Size).ShouldContain(e => e.Depth == 1000 && e.Data);
    }

    [Test]
    public void Chain_deeper_than_the_limit_fails_clearly()
    {
        var top = CreateChain(ChainContext.MaxDepth + 1);
        Should.Throw<NotSupportedException>(() => Qcow2Image.Open(top).Dispose())
            .Message.ShouldContain($"deeper than {ChainContext.MaxDepth} backing files");
    }

    [Test]
    public void Deep_chain_on_a_small_stack_fails_clearly_instead_of_overflowing()
    {
        var top = CreateChain(1000);
        Exception? error = null;
        var thread = new Thread(
            () =>
            {
                try
                {
                    Qcow2Image.Open(top).Dispose();
                }
                catch (NotSupportedException caught)
                {
                    error = caught;
                }
            },
            maxStackSize: 256 * 1024);
        thread.Start();
        thread.Join();
        error.ShouldBeOfType<NotSupportedException>().Message.ShouldContain("too deep for this thread's stack");
    }

    [Test]
    public void Ignoring_backing_files_opens_the_image_under_any_policy()
    {
        var top = CreateOverlay(Path.Combine(Tree, "top.qcow2"), "/etc/passwd", "raw");
        using var image = Qcow2Image.Open(top, new Qcow2OpenOptions { BackingPolicy = BackingFilePolicy.None, BackingFiles = BackingFileMode.Ignore });
        image.Info.BackingFileName.ShouldBe("/etc/passwd");
    }

    [Test]
    public void Data_files_follow_the_policy_too()
    {
        var path = Path.Combine(Tree, "data.qcow2");
        using (Qcow2Image.Create(path, new Qcow2CreateOptions { Size = Size, DataFile = Path.Combine(Outside, "data.raw") }))
        {
        }

        Should.Throw<BackingFilePolicyException>(() => Qcow2Image.Open(path, Options(Policy.Confined)).Dispose())
            .Message.ShouldContain("external data file");
        using var any = Qcow2Image.Open(path, Options(Policy.Any));
    }

    private Qcow2Image Open(string path, Policy policy) => Qcow2Image.Open(path, Options(policy));

    private Qcow2OpenOptions Options(Policy policy) => new()
    {
        BackingPolicy = policy switch
        {
            Policy.Any => BackingFilePolicy.AnyRegularFile,
            Policy.None => BackingFilePolicy.None,
            Policy.Confined => BackingFilePolicy.ConfinedTo(Tree),
            _ => BackingFilePolicy.Where((_, full) => full.StartsWith(Tree + "/", StringComparison.Ordinal), "names under the tree"),
        },
    };

    private void AssertOpens(string top, Policy policy, bool allowed)
    {
        if (allowed)
        {
            using var image = Open(top, policy);
            image.BackingChain.Count.ShouldBe(2);
            return;
        }

        var error = Should.Throw<BackingFilePolicyException>(() => Open(top, policy).Dispose());
        error.Message.ShouldContain("does not allow");
    }

    /// <summary>
    /// c0000 (0x5a in its first sector) under <paramref name="depth"/> overlays, each naming the one
    /// below. Overlays are copies of one template with the name patched (same length), so a deep
    /// chain costs file copies, not image creations.
    /// </summary>
    private string CreateChain(int depth)
    {
        string Name(int i) => $"c{i:D5}.qcow2";
        var bottom = CreateBase(Path.Combine(Tree, Name(0)));
        using (var image = Qcow2Image.Open(bottom, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, Enumerable.Repeat((byte)0x5a, 512).ToArray());
        }

        var template = File.ReadAllBytes(CreateOverlay(Path.Combine(Tree, Name(1)), Name(0)));
        var at = template.AsSpan().IndexOf(System.Text.Encoding.ASCII.GetBytes(Name(0)));
        for (var i = 2; i <= depth; i++)
        {
            var copy = (byte[])template.Clone();
            System.Text.Encoding.ASCII.GetBytes(Name(i - 1)).CopyTo(copy, at);
            File.WriteAllBytes(Path.Combine(Tree, Name(i)), copy);
        }

        return Path.Combine(Tree, Name(depth));
    }

    private static string CreateBase(string path)
    {
        using (Qcow2Image.Create(path, new Qcow2CreateOptions { Size = Size }))
        {
        }

        return path;
    }

    private static string CreateOverlay(string path, string backing, string? format = "qcow2")
    {
        var create = new Qcow2CreateOptions { Size = Size, BackingFile = backing, BackingFormat = format ?? "raw", OpenOptions = new() { BackingFiles = BackingFileMode.Ignore } };
        using (Qcow2Image.Create(path, create))
        {
        }

        if (format is null)
        {
            // No format in the header: the opener probes the file, as for images made without -F.
            using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, BackingFiles = BackingFileMode.Ignore });
            image.SetBackingFile(backing, null);
        }

        return path;
    }
}
