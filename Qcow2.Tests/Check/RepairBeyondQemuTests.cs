using System.Text.Json;
using QcowDedup.Qcow2.Check;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Check;

/// <summary>
/// Issue 9, item 8 and acceptance 5: for every kind of damage in <see cref="BrokenImages"/>,
/// <see cref="Qcow2Image.Check(CheckRepair)"/> with <see cref="CheckRepair.All"/> leaves an image
/// stock qemu-img check finds clean (no corruption, no leak, exit 0) — also where qemu-img's own
/// repair leaves errors behind. There the result says what the repair changed, and names in
/// <see cref="CheckResult.Losses"/> only guest ranges the damage reached; every other guest cluster
/// keeps its bytes. (<see cref="CheckParityTests"/> does the same through the command line.)
/// </summary>
[TestFixture]
[Category("Interop")]
public sealed class RepairBeyondQemuTests : TempDirectoryFixture
{
    private const int ClusterSize = BrokenImages.ClusterSize;

    public static IEnumerable<TestCaseData> Kinds() =>
        BrokenImages.All.Select(kind => new TestCaseData(kind).SetArgDisplayNames(kind.Name));

    [TestCaseSource(nameof(Kinds))]
    public void Repair_all_leaves_an_image_qemu_img_finds_clean(BrokenImage kind)
    {
        var valid = PathOf("valid.qcow2");
        kind.Build(valid);
        var broken = PathOf("broken.qcow2");
        File.Copy(valid, broken);
        kind.Break(broken);

        var result = Repair(broken);
        var said = string.Join('\n', result.Messages);

        result.IsClean.ShouldBeTrue(said);
        Qemu.AssertClean(broken);
        if (kind.QemuRepairs)
        {
            result.Losses.ShouldBeEmpty("qemu-img repairs this kind without dropping anything");
        }
        else
        {
            said.ShouldContain(kind.Salvage ?? "<the corpus names what our repair says for this kind>", Case.Sensitive, "qemu-img leaves this kind broken: the result says what we changed or dropped");
        }

        foreach (var loss in result.Losses.Where(l => l.SnapshotId is null))
        {
            kind.BrokenGuest.ShouldContain(r => r.Offset <= loss.GuestOffset && loss.GuestOffset + loss.Length <= r.Offset + r.Length, $"{loss} lies where the damage reached");
        }

        AssertIntact(broken, valid, kind.BrokenGuest);
    }

    [Test]
    public void An_l2_entry_past_the_end_of_the_file_is_dropped_and_named_as_lost_by_the_library_and_the_cli()
    {
        var path = Broken("l2_entry_past_end_of_file");
        var cliCopy = PathOf("cli.qcow2");
        File.Copy(path, cliCopy);
        var jsonCopy = PathOf("json.qcow2");
        File.Copy(path, jsonCopy);

        var loss = Repair(path).Losses.ShouldHaveSingleItem();
        loss.SnapshotId.ShouldBeNull();
        (loss.GuestOffset, loss.Length).ShouldBe((BrokenImages.SecondData, ClusterSize));
        loss.Reason.ShouldContain("past the end of the file");

        var human = CliRunner.Run("check", "-r", "all", cliCopy);
        human.ExitCode.ShouldBe(0, human.Error);
        human.Output.ShouldContain("The repair dropped 1 guest ranges it could not read; their data is lost:\n    guest offset 0x100000, 65536 bytes: host offset");

        var json = CliRunner.Run("check", "-r", "all", "--output=json", jsonCopy);
        json.ExitCode.ShouldBe(0, json.Error);
        var lost = JsonDocument.Parse(json.Output).RootElement.GetProperty("lost-data").EnumerateArray().ShouldHaveSingleItem();
        lost.GetProperty("offset").GetInt64().ShouldBe(BrokenImages.SecondData);
        lost.GetProperty("length").GetInt64().ShouldBe(ClusterSize);
    }

    [Test]
    public void A_repair_qemu_img_can_do_itself_prints_no_lost_data()
    {
        var path = Broken("copied_missing_on_data");
        var json = CliRunner.Run("check", "-r", "all", "--output=json", path);

        json.ExitCode.ShouldBe(0, json.Error);
        JsonDocument.Parse(json.Output).RootElement.TryGetProperty("lost-data", out _).ShouldBeFalse();
    }

    /// <summary>
    /// With a backing file, an unallocated entry would show the backing file's older bytes as the
    /// guest's: a dropped mapping of a v3 image becomes a zero cluster; v2 has none, so there the
    /// backing file shows through and the report says so.
    /// </summary>
    [TestCase("1.1", "reads as zeros now (a zero cluster, not the backing file's data)", (byte)0)]
    [TestCase("0.10", "reads from the backing file now (a v2 image has no zero clusters)", (byte)0x55)]
    public void A_dropped_mapping_over_a_backing_file(string compat, string reads, byte expected)
    {
        var backing = PathOf("base.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536,compat=" + compat, backing, "4M");
        Qemu.Io(backing, "write -P 0x55 0 256k");
        var path = PathOf("overlay.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536,compat=" + compat, "-b", backing, "-F", "qcow2", path);
        Qemu.Io(path, "write -P 0x66 0 128k");
        var end = new FileInfo(path).Length;
        ImagePatch.WriteU64(path, ImagePatch.L2EntryOffset(path, ClusterSize), (1UL << 63) | (ulong)(end + (10L * ClusterSize)));

        var result = Repair(path);

        result.IsClean.ShouldBeTrue(string.Join('\n', result.Messages));
        result.Messages.ShouldContain(m => m.StartsWith("Dropped the mapping of guest offset 0x10000 ", StringComparison.Ordinal) && m.EndsWith(reads, StringComparison.Ordinal));
        result.Losses.ShouldHaveSingleItem().GuestOffset.ShouldBe(ClusterSize);
        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x66 0 64k", $"read -P 0x{expected:x2} 64k 64k", "read -P 0x55 128k 128k");
    }

    [Test]
    public void An_l1_entry_with_flags_but_no_table_is_cleared_and_loses_nothing()
    {
        var path = PathOf("flags.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536", path, "1G");
        Qemu.Io(path, "write -P 0x11 0 64k");
        var l1 = ImagePatch.ReadHeader(path).Header.L1TableOffset;
        ImagePatch.WriteU64(path, l1 + 8, 0x100); // range [512 MiB, 1 GiB): a reserved bit and no offset

        var result = Repair(path);

        result.IsClean.ShouldBeTrue(string.Join('\n', result.Messages));
        result.Messages.ShouldContain("Cleared L1 entry 1 (guest offset range [0x20000000, 0x40000000)): it has no L2 table offset, only the bits 0x100");
        result.Losses.ShouldBeEmpty();
        ImagePatch.ReadU64(path, l1 + 8).ShouldBe(0UL);
        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x11 0 64k");
    }

    [Test]
    public void Mappings_past_the_end_of_the_disk_are_dropped_without_counting_as_lost_data()
    {
        var path = PathOf("long-l1.qcow2");
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=65536", path, "64M");
        Qemu.Io(path, "write -P 0x11 0 64k");
        var l1 = ImagePatch.ReadHeader(path).Header.L1TableOffset;
        var table = (new FileInfo(path).Length + ClusterSize - 1) / ClusterSize * ClusterSize;
        ImagePatch.Truncate(path, table + ClusterSize);
        ImagePatch.WriteU64(path, table, (1UL << 63) | (ulong)(table + (8L * ClusterSize))); // a data cluster past the end
        ImagePatch.EditHeader(path, h => h with { Header = h.Header with { L1Size = 3 } }); // the 64 MiB disk needs one entry
        ImagePatch.WriteU64(path, l1 + 8, (1UL << 63) | (ulong)(table + (4L * ClusterSize))); // an L2 table past the end
        ImagePatch.WriteU64(path, l1 + 16, (1UL << 63) | (ulong)table);

        var result = Repair(path);

        result.IsClean.ShouldBeTrue(string.Join('\n', result.Messages));
        result.Messages.ShouldContain(m => m.StartsWith("Dropped the L2 table of guest offset range [0x20000000, 0x40000000) (L1 entry 1", StringComparison.Ordinal));
        result.Messages.ShouldContain(m => m.StartsWith("Dropped the mapping of guest offset 0x40000000 ", StringComparison.Ordinal));
        result.Losses.ShouldBeEmpty("no guest reads past the end of the 64 MiB disk");
        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0x11 0 64k");
    }

    private string Broken(string kindName)
    {
        var kind = BrokenImages.All.Single(k => k.Name == kindName);
        var path = PathOf(kindName + ".qcow2");
        kind.Build(path);
        kind.Break(path);
        return path;
    }

    private static CheckResult Repair(string path)
    {
        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions { Writable = true, ForRepair = true });
        return image.Check(CheckRepair.All);
    }

    /// <summary>Guest clusters outside the damaged ranges read as in the valid image.</summary>
    private static void AssertIntact(string repaired, string valid, (long Offset, long Length)[] damaged)
    {
        using var first = File.OpenRead(ToRaw(repaired));
        using var second = File.OpenRead(ToRaw(valid));
        first.Length.ShouldBe(second.Length);
        var a = new byte[ClusterSize];
        var b = new byte[ClusterSize];
        for (long offset = 0; offset < first.Length; offset += ClusterSize)
        {
            first.ReadExactly(a);
            second.ReadExactly(b);
            if (!damaged.Any(r => offset < r.Offset + r.Length && r.Offset < offset + ClusterSize))
            {
                a.AsSpan().SequenceEqual(b).ShouldBeTrue($"guest cluster at 0x{offset:x} changed by the repair");
            }
        }
    }

    private static string ToRaw(string image)
    {
        var raw = image + ".raw";
        Qemu.Img("convert", "-U", "-f", "qcow2", "-O", "raw", image, raw);
        return raw;
    }
}
