using System.Text.Json;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Dedup;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Snapshots;

/// <summary>
/// Issue 5, acceptance 2: internal snapshots. Random sequences of create / write / apply /
/// delete; after every operation qemu-img check is clean, qemu-img snapshot -l lists what we list,
/// and every snapshot reads (through QEMU, qemu-img convert -l) what the model says. Snapshots made
/// by qemu-img are applied and deleted by us, and ours by qemu-img.
/// </summary>
[TestFixture]
[Category("Interop")]
public class SnapshotTests : TempDirectoryFixture
{
    private const long DiskSize = 4L << 20;

    [TestCase("1.1", 65536, false)]
    [TestCase("1.1", 4096, false)]
    [TestCase("0.10", 65536, false)]
    [TestCase("1.1", 4096, true)] // dedup-shared clusters under snapshots
    public void Random_snapshot_operations_keep_the_image_clean_and_every_snapshot_exact(string compat, int clusterSize, bool dedup)
    {
        var path = PathOf("snap.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", $"compat={compat},cluster_size={clusterSize}", path, DiskSize.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var active = new SparseModel(DiskSize);
        var snapshots = new Dictionary<string, SparseModel>(StringComparer.Ordinal);
        var random = new Random(clusterSize + (dedup ? 1 : 0) + compat.Length);
        var options = new Qcow2OpenOptions { Writable = true };
        for (var step = 0; step < 14; step++)
        {
            using (var image = Qcow2Image.Open(path, dedup ? options.WithDedup() : options))
            {
                WriteSome(image, active, random, clusterSize);
                var roll = random.Next(10);
                if (roll < 4 || snapshots.Count == 0)
                {
                    var created = image.CreateSnapshot($"snap-{step}");
                    snapshots[created.Id] = active.Clone();
                }
                else if (roll < 7)
                {
                    var id = snapshots.Keys.ElementAt(random.Next(snapshots.Count));
                    image.ApplySnapshot(id, SnapshotLookup.Id);
                    active = snapshots[id].Clone();
                }
                else
                {
                    var id = snapshots.Keys.ElementAt(random.Next(snapshots.Count));
                    image.DeleteSnapshot(id, SnapshotLookup.Id);
                    snapshots.Remove(id);
                }

                DedupOracle.AssertReadsModel(image, active, $"after step {step}");
            }

            AssertQemuAgrees(path, active, snapshots, $"step {step}");
        }
    }

    [Test]
    public void Snapshots_made_by_qemu_img_are_applied_and_deleted_by_us_and_ours_by_qemu_img()
    {
        var path = PathOf("mixed.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "4M");
        Qemu.Io(path, "write -P 0x11 0 1M");
        Qemu.Img("snapshot", "-c", "by-qemu", path);
        Qemu.Io(path, "write -P 0x22 512k 1M");
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.CreateSnapshot("by-us");
            image.Write(3 << 20, new byte[65536].Select(_ => (byte)0x33).ToArray());
            image.ApplySnapshot("by-qemu", SnapshotLookup.Name);
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x11 0 1M", "read -P 0 1M 3M");
        Qemu.Img("snapshot", "-a", "by-us", path);
        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x11 0 512k", "read -P 0x22 512k 1M", "read -P 0 3M 1M");
        Qemu.Img("snapshot", "-d", "by-us", path);
        Qemu.AssertClean(path);
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.DeleteSnapshot("by-qemu", SnapshotLookup.Name);
            image.Snapshots.ShouldBeEmpty();
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x11 0 512k", "read -P 0x22 512k 1M");
    }

    [Test]
    public void Applying_a_snapshot_restores_its_disk_size()
    {
        var path = PathOf("size.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "1M");
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            image.Write(0, Enumerable.Repeat((byte)7, 4096).ToArray());
            image.CreateSnapshot("small");
            image.Resize(8 << 20);
            image.Write(5 << 20, Enumerable.Repeat((byte)8, 4096).ToArray());
            image.ApplySnapshot("small", SnapshotLookup.Name);
            image.Size.ShouldBe(1 << 20);
        }

        Qemu.AssertClean(path);
        Qemu.Img("info", path).ShouldContain("virtual size: 1 MiB");
        Qemu.Io(path, "read -P 7 0 4k");
    }

    [Test]
    public void Snapshot_errors_name_what_is_wrong()
    {
        var path = PathOf("errors.qcow2");
        var data = PathOf("errors.raw");
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", $"data_file={data}", path, "1M");
        using (var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true }))
        {
            Should.Throw<NotSupportedException>(() => image.CreateSnapshot("x")).Message.ShouldContain("external data file");
        }

        var plain = PathOf("plain.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", plain, "1M");
        using (var readOnly = Qcow2Image.Open(plain))
        {
            Should.Throw<NotSupportedException>(() => readOnly.CreateSnapshot("x"));
        }

        using (var image = Qcow2Image.Open(plain, new Qcow2OpenOptions { Writable = true }))
        {
            Should.Throw<KeyNotFoundException>(() => image.DeleteSnapshot("nosuch", SnapshotLookup.Name)).Message.ShouldContain("nosuch");
            Should.Throw<KeyNotFoundException>(() => image.ApplySnapshot("nosuch", SnapshotLookup.IdThenName));
        }

        var missing = CliRunner.Run("snapshot", "-d", "nosuch", plain);
        missing.ExitCode.ShouldBe(1);
        missing.Error.ShouldContain("Could not delete snapshot 'nosuch': snapshot not found");
        CliRunner.Run("snapshot", "-l", "-c", "x", plain).ExitCode.ShouldBe(1);
        Qemu.AssertClean(plain);
    }

    [Test]
    public void Cli_snapshot_verbs_match_qemu_img()
    {
        var path = PathOf("cli.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "1M");
        CliRunner.Run("snapshot", "-c", "first", path).ExitCode.ShouldBe(0);
        Qemu.Img("snapshot", "-c", "second", path);
        CliRunner.Run("snapshot", "-c", "first", path).ExitCode.ShouldBe(0); // names may repeat; ids do not
        var ours = CliRunner.Run("snapshot", "-l", path);
        ours.ExitCode.ShouldBe(0);
        ours.Output.ShouldBe(Qemu.Img("snapshot", "-l", path));
        CliRunner.Run("snapshot", "-d", "first", path).ExitCode.ShouldBe(0); // the first match
        Qemu.Img("snapshot", "-l", path).ShouldNotContain("1         first");
        Qemu.AssertClean(path);
    }

    [Test]
    public void Ids_and_names_are_looked_up_separately()
    {
        var path = ThreeSnapshotsWhereANameIsAnotherId();
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true });
        image.FindSnapshot("2", SnapshotLookup.Id)!.Name.ShouldBe("y");
        image.FindSnapshot("2", SnapshotLookup.Name)!.Id.ShouldBe("3");
        image.FindSnapshot("2", SnapshotLookup.IdThenName)!.Name.ShouldBe("y");
        image.FindSnapshot("x", SnapshotLookup.IdThenName)!.Id.ShouldBe("1");
        image.FindSnapshot("x", SnapshotLookup.Id).ShouldBeNull();
        image.FindSnapshot("1", SnapshotLookup.Name).ShouldBeNull();
        Should.Throw<KeyNotFoundException>(() => image.DeleteSnapshot("1", SnapshotLookup.Name)).Message.ShouldContain("name '1'");

        image.DeleteSnapshot("2", SnapshotLookup.Name);
        image.Snapshots.Select(s => (s.Id, s.Name)).ShouldBe([("1", "x"), ("2", "y")]);
        using (var view = image.OpenSnapshot("2", SnapshotLookup.Id))
        {
            var first = new byte[1];
            view.Read(0, first);
            first[0].ShouldBe((byte)0x22);
        }

        image.ApplySnapshot("x", SnapshotLookup.Name);
        var byte0 = new byte[1];
        image.Read(0, byte0);
        byte0[0].ShouldBe((byte)0x11);
    }

    [TestCase("-d", "2")] // deletes the snapshot named "2" (id 3), not id 2
    [TestCase("-d", "y")]
    [TestCase("-d", "1")] // no snapshot is named "1": an error, although id 1 exists
    [TestCase("-a", "2")] // applies id 2 ("y"), not the snapshot named "2"
    [TestCase("-a", "x")] // no id "x": the name
    [TestCase("-a", "3")]
    [TestCase("-a", "4")] // neither: an error
    public void Cli_snapshot_lookup_matches_qemu_img(string verb, string key)
    {
        var qemu = ThreeSnapshotsWhereANameIsAnotherId();
        var ours = PathOf("ours.qcow2");
        File.Copy(qemu, ours);

        var expected = Qemu.ImgResult("snapshot", verb, key, qemu);
        var actual = CliRunner.Run("snapshot", verb, key, ours);

        actual.ExitCode.ShouldBe(expected.ExitCode, expected.Error);
        actual.Error.Replace("qcow2: ", string.Empty, StringComparison.Ordinal).ShouldBe(expected.Error.Replace("qemu-img: ", string.Empty, StringComparison.Ordinal));
        Qemu.Img("snapshot", "-l", ours).ShouldBe(Qemu.Img("snapshot", "-l", qemu));
        var compare = Qemu.Compare(ours, qemu, "qcow2", "qcow2");
        compare.ExitCode.ShouldBe(0, compare.Output + compare.Error);
        Qemu.AssertClean(ours);
    }

    /// <summary>Snapshots id 1 "x" (disk of 0x11), id 2 "y" (0x22) and id 3 "2" (0x33), then 0x44 written; all by qemu-img.</summary>
    private string ThreeSnapshotsWhereANameIsAnotherId()
    {
        var path = PathOf("lookup.qcow2");
        Qemu.Img("create", "-q", "-f", "qcow2", path, "1M");
        foreach (var (pattern, name) in new[] { ("0x11", "x"), ("0x22", "y"), ("0x33", "2") })
        {
            Qemu.Io(path, $"write -P {pattern} 0 64k");
            Qemu.Img("snapshot", "-c", name, path);
        }

        Qemu.Io(path, "write -P 0x44 0 64k");
        return path;
    }

    private static void WriteSome(Qcow2Image image, SparseModel model, Random random, int clusterSize)
    {
        for (var i = 0; i < 6; i++)
        {
            var length = random.Next(1, 3) * clusterSize;
            var offset = random.NextInt64(0, (image.Size - length) / 512) * 512;
            var data = random.Next(3) == 0
                ? DedupOracle.Pattern(random.Next(4), length) // repeated contents: shared with dedup
                : DedupOracle.Pattern(random.Next(1000, 100000), length);
            image.Write(offset, data);
            model.Write(offset, data);
        }
    }

    private void AssertQemuAgrees(string path, SparseModel active, Dictionary<string, SparseModel> snapshots, string when)
    {
        Qemu.AssertClean(path);
        using var info = JsonDocument.Parse(Qemu.Img("info", "--output=json", path));
        var listed = info.RootElement.TryGetProperty("snapshots", out var list)
            ? list.EnumerateArray().Select(s => s.GetProperty("id").GetString()!).ToList()
            : [];
        listed.ShouldBe(snapshots.Keys.ToList(), ignoreOrder: true, customMessage: when);

        CompareThroughQemu(path, null, active, when + ", active disk");
        foreach (var (id, model) in snapshots)
        {
            CompareThroughQemu(path, id, model, $"{when}, snapshot {id}");
        }
    }

    private void CompareThroughQemu(string path, string? snapshotId, SparseModel model, string when)
    {
        var raw = PathOf("expected.raw");
        var actual = PathOf("actual.raw");
        model.WriteRaw(raw);
        if (snapshotId is null)
        {
            Qemu.Img("convert", "-O", "raw", path, actual);
        }
        else
        {
            Qemu.Img("convert", "-l", $"snapshot.id={snapshotId}", "-O", "raw", path, actual);
        }

        var compare = Qemu.Compare(actual, raw, "raw", "raw");
        compare.ExitCode.ShouldBe(0, $"{when}: {compare.Output}{compare.Error}");
    }
}
