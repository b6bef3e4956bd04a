using System.Buffers.Binary;
using DiscUtils;
using DiscUtils.Fat;
using DiscUtils.Partitions;
using DiscUtils.Setup;
using DiscUtils.Streams;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.DiscUtils;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;
using RawDisk = DiscUtils.Raw.Disk;

namespace QcowDedup.Qcow2.Tests.VirtualDisks;

/// <summary>
/// qcow2 as a DiscUtils virtual disk (issue 12): VirtualDisk.CreateDisk/OpenDisk, partitions and FAT32
/// written through the adapter and checked by QEMU, sparse extents, layers of a backing chain, and
/// dedup through a file system.
/// </summary>
[TestFixture]
public sealed class VirtualDiskAdapterTests : TempDirectoryFixture
{
    private const long GiB = 1L << 30;

    [OneTimeSetUp]
    public void RegisterFactories()
    {
        Qcow2DiscUtils.Register();
        Qcow2DiscUtils.Register(); // twice is harmless
        SetupHelper.RegisterAssembly(typeof(FatFileSystem).Assembly);
    }

    [TestCase("mbr")]
    [TestCase("gpt")]
    public void A_FAT32_disk_made_through_CreateDisk_reads_back_through_QEMU_and_OpenDisk(string scheme)
    {
        var path = PathOf("fs.qcow2");
        var tree = FileTree.Generate(320, seed: 1);
        int index;
        using (var disk = VirtualDisk.CreateDisk("QCOW2", "dynamic", path, GiB, null, null))
        {
            disk.ShouldBeOfType<Qcow2Disk>();
            // GPT puts a Microsoft reserved partition first; the data partition is the one created.
            index = scheme == "mbr"
                ? BiosPartitionTable.Initialize(disk).Create(WellKnownPartitionType.WindowsFat, active: true)
                : GuidPartitionTable.Initialize(disk).Create(WellKnownPartitionType.WindowsFat, active: true);
            using var fileSystem = FatFileSystem.FormatPartition(disk, index, "QCOWTEST");
            fileSystem.FatVariant.ShouldBe(FatType.Fat32);
            tree.WriteTo(fileSystem);
        }

        Qemu.AssertClean(path);
        var raw = PathOf("fs.raw");
        Qemu.Img("convert", "-f", "qcow2", "-O", "raw", path, raw);
        using (var rawDisk = new RawDisk(raw, FileAccess.Read))
        {
            rawDisk.Partitions.Partitions.Count.ShouldBe(index + 1);
            using var fileSystem = new FatFileSystem(rawDisk.Partitions[index].Open());
            tree.ShouldMatch(fileSystem);
        }

        using (var disk = VirtualDisk.OpenDisk(path, FileAccess.Read))
        {
            disk.ShouldBeOfType<Qcow2Disk>();
            disk.Content.CanWrite.ShouldBeFalse();
            using var fileSystem = new FatFileSystem(disk.Partitions[index].Open());
            tree.ShouldMatch(fileSystem);
        }
    }

    [Test]
    public void OpenDisk_read_write_writes_the_image_and_keeps_it_clean()
    {
        var path = PathOf("rw.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "64M");
        var data = Enumerable.Range(0, 1 << 20).Select(i => (byte)(i * 7)).ToArray();
        using (var disk = VirtualDisk.OpenDisk(path, FileAccess.ReadWrite))
        {
            disk.Capacity.ShouldBe(64L << 20);
            disk.Geometry.ShouldBe(Geometry.FromCapacity(64L << 20));
            disk.DiskTypeInfo.Name.ShouldBe("QCOW2");
            disk.Parameters.ExtendedParameters["cluster_size"].ShouldBe("65536");
            disk.Content.Position = 3 << 20;
            disk.Content.Write(data);
        }

        Qemu.AssertClean(path);
        Qemu.Io(path, "read -P 0 0 3M").ShouldNotContain("fail");
        var readBack = new byte[data.Length];
        using var image = Qcow2Image.Open(path);
        image.Read(3 << 20, readBack);
        readBack.ShouldBe(data);
    }

    /// <summary>Acceptance 3: a 2 GiB disk holding 224 MiB reports 224 MiB of extents, and DiscUtils' sparse pump reads only them.</summary>
    [Test]
    public void Content_extents_are_the_stored_ranges_so_a_sparse_copy_reads_only_them()
    {
        var path = PathOf("sparse.qcow2");
        var chunk = new byte[4 << 20];
        var random = new Random(3);
        var written = new List<StreamExtent>();
        using (var disk = VirtualDisk.CreateDisk("QCOW2", "dynamic", path, 2 * GiB, null, null))
        {
            for (var i = 0; i < 56; i++)
            {
                random.NextBytes(chunk);
                var offset = i * (36L << 20) + (1 << 20);
                disk.Content.Position = offset;
                disk.Content.Write(chunk);
                written.Add(new StreamExtent(offset, chunk.Length));
            }
        }

        var copy = PathOf("copy.raw");
        using (var disk = VirtualDisk.OpenDisk(path, FileAccess.Read))
        {
            var extents = disk.Content.Extents.ToList();
            extents.ShouldBe(written);
            disk.Content.GetExtentsInRange(written[1].Start + 100, 1 << 20).ShouldBe([new StreamExtent(written[1].Start + 100, 1 << 20)]);
            disk.Content.GetExtentsInRange(0, 1 << 20).ShouldBeEmpty();

            using var output = new FileStream(copy, FileMode.CreateNew, FileAccess.ReadWrite);
            output.SetLength(disk.Capacity);
            var pump = new StreamPump(disk.Content, output, 512) { SparseCopy = true };
            pump.Run();
            pump.BytesRead.ShouldBe(224L << 20); // a pump that saw one 2 GiB extent would read 2048 MiB
        }

        Qemu.Compare(path, copy).ExitCode.ShouldBe(0);
    }

    [Test]
    public void A_differencing_disk_is_a_qcow2_overlay_whose_layers_compose_to_the_content()
    {
        var basePath = PathOf("base.qcow2");
        var overlayPath = PathOf("overlay.qcow2");
        using (var disk = VirtualDisk.CreateDisk("QCOW2", "dynamic", basePath, 16L << 20, null, null))
        {
            disk.Content.Write(Enumerable.Repeat((byte)0xAA, 1 << 20).ToArray());

            // An overlay reads its backing file, which must not change underneath it: not while this disk writes.
            Should.Throw<InvalidOperationException>(() => disk.CreateDifferencingDisk(PathOf("early.qcow2"))).Message.ShouldContain("read-only");
            File.Exists(PathOf("early.qcow2")).ShouldBeFalse();
        }

        using (var parent = VirtualDisk.OpenDisk(basePath, FileAccess.Read))
        using (var overlay = parent.CreateDifferencingDisk(overlayPath))
        {
            overlay.Content.Position = 512 << 10;
            overlay.Content.Write(Enumerable.Repeat((byte)0xBB, 64 << 10).ToArray());
        }

        Qemu.AssertClean(basePath);
        Qemu.AssertClean(overlayPath);
        Qemu.Img("info", overlayPath).ShouldContain("backing file: base.qcow2");
        Qemu.Io(overlayPath, "read -P 0xAA 0 512k", "read -P 0xBB 512k 64k", "read -P 0xAA 576k 448k", "read -P 0 1M 15M");

        using var reopened = VirtualDisk.OpenDisk(overlayPath, FileAccess.Read);
        var layers = reopened.Layers.ToList();
        layers.Count.ShouldBe(2);
        layers[0].NeedsParent.ShouldBeTrue();
        layers[0].GetParentLocations().ShouldContain("base.qcow2");
        layers[1].NeedsParent.ShouldBeFalse();
        layers[1].FullPath.ShouldBe(basePath);

        using var bottom = layers[1].OpenContent(null!, Ownership.None);
        using var composed = layers[0].OpenContent(bottom, Ownership.None);
        var expected = new byte[2 << 20];
        var actual = new byte[2 << 20];
        reopened.Content.Position = 0;
        reopened.Content.ReadExactly(expected);
        composed.ReadExactly(actual);
        actual.ShouldBe(expected);
        composed.Extents.ShouldBe([new StreamExtent(0, 1 << 20)]);
        layers[0].OpenContent(null!, Ownership.None).Extents.ShouldBe([new StreamExtent(512 << 10, 64 << 10)]);
    }

    [Test]
    public void Create_parameters_use_qemu_img_names_and_bad_ones_are_named()
    {
        var path = PathOf("params.qcow2");
        var parameters = new Dictionary<string, string> { ["cluster_size"] = "16384", ["compression_type"] = "zstd", ["lazy_refcounts"] = "on" };
        using (var disk = VirtualDisk.CreateDisk("QCOW2", "dynamic", path, 8L << 20, null, parameters))
        {
            disk.Parameters.ExtendedParameters["compression_type"].ShouldBe("zstd");
        }

        Qemu.Img("info", path).ShouldSatisfyAllConditions(
            info => info.ShouldContain("cluster_size: 16384"),
            info => info.ShouldContain("compression type: zstd"),
            info => info.ShouldContain("lazy refcounts: true"));

        var bad = new Dictionary<string, string> { ["clustersize"] = "4096" };
        Should.Throw<ArgumentException>(() => VirtualDisk.CreateDisk("QCOW2", "dynamic", PathOf("bad.qcow2"), 8L << 20, null, bad))
            .Message.ShouldContain("clustersize");
        Should.Throw<ArgumentException>(() => VirtualDisk.CreateDisk("QCOW2", "sparse", PathOf("bad.qcow2"), 8L << 20, null, null))
            .Message.ShouldContain("sparse");
        File.Exists(PathOf("bad.qcow2")).ShouldBeFalse();
        Should.Throw<IOException>(() => VirtualDisk.CreateDisk("QCOW2", "dynamic", path, 8L << 20, null, null)).Message.ShouldContain("exists");
    }

    /// <summary>Acceptance 5: a tree written twice through FAT32 onto a 4 KiB-cluster dedup image stores about one copy.</summary>
    [Test]
    public void The_same_tree_written_twice_through_FAT_onto_a_dedup_image_stores_one_copy()
    {
        var tree = FileTree.Generate(300, seed: 5, maxSize: 64 << 10);
        var once = Fill(PathOf("once.qcow2"), tree, copies: 1);
        var twice = Fill(PathOf("twice.qcow2"), tree, copies: 2);
        TestContext.Out.WriteLine($"{tree.Bytes} bytes per copy: {once} host clusters for one copy, {twice} for two ({(double)twice / once:F3}×)");
        once.ShouldBeGreaterThan(tree.Bytes / 4096);
        twice.ShouldBeLessThanOrEqualTo((long)(once * 1.05));

        Qemu.AssertClean(PathOf("twice.qcow2"));
        using var disk = VirtualDisk.OpenDisk(PathOf("twice.qcow2"), FileAccess.Read);
        using var fileSystem = new FatFileSystem(disk.Partitions[0].Open());
        tree.ShouldMatch(fileSystem, "COPY1");
        tree.ShouldMatch(fileSystem, "COPY2");
    }

    /// <summary>The README's DiscUtils example, statement for statement.</summary>
    [Test]
    public void The_readme_example_runs()
    {
        var previous = Environment.CurrentDirectory;
        Environment.CurrentDirectory = Directory;
        try
        {
            Qemu.Img("convert", "-f", "qcow2", "-O", "vmdk", MakeSample(), "disk.vmdk");
            using (var disk = VirtualDisk.CreateDisk("QCOW2", "dedup", "fs.qcow2", 1L << 30, null, null))
            {
                var partition = BiosPartitionTable.Initialize(disk).Create(WellKnownPartitionType.WindowsFat, active: true);
                using var fat = FatFileSystem.FormatPartition(disk, partition, "DATA");
                using var file = fat.OpenFile("README.TXT", FileMode.Create, FileAccess.Write);
                file.Write("hello"u8);
            }

            using (var disk = VirtualDisk.OpenDisk("fs.qcow2", FileAccess.Read))
            using (var fat = new FatFileSystem(disk.Partitions[0].Open()))
            {
                fat.GetFiles(string.Empty).Length.ShouldBe(1);
            }

            using (var source = ForeignDisks.Open("disk.vmdk", "vmdk"))
            using (var target = Qcow2Image.Create("disk.qcow2", new Qcow2CreateOptions { Size = source.Size, ClusterSize = 4096 }.WithDedup()))
            {
                ImageCopier.Copy(source, target);
            }

            Qemu.AssertClean(PathOf("fs.qcow2"));
            Qemu.AssertClean(PathOf("disk.qcow2"));
            Qemu.Compare(PathOf("disk.vmdk"), PathOf("disk.qcow2"), "vmdk", "qcow2").ExitCode.ShouldBe(0);
        }
        finally
        {
            Environment.CurrentDirectory = previous;
        }
    }

    private string MakeSample()
    {
        var path = PathOf("sample.qcow2");
        Qemu.Img("create", "-f", "qcow2", path, "32M");
        Qemu.Io(path, "write -P 0x42 0 2M", "write -P 0x42 8M 2M", "write -P 0x17 20M 64k");
        return path;
    }

    private static long Fill(string path, FileTree tree, int copies)
    {
        using (var disk = (Qcow2Disk)VirtualDisk.CreateDisk("QCOW2", "dedup", path, GiB, null, null))
        {
            disk.Parameters.ExtendedParameters["cluster_size"].ShouldBe("4096");
            disk.Parameters.ExtendedParameters["dedup"].ShouldBe("on");
            var table = BiosPartitionTable.Initialize(disk);
            var index = table.CreateAligned(WellKnownPartitionType.WindowsFat, active: true, alignment: 1 << 20);
            var partition = table.Partitions[index];
            using var fileSystem = FormatAligned(partition, disk.Geometry, 4096);
            for (var copy = 1; copy <= copies; copy++)
            {
                tree.WriteTo(fileSystem, $"COPY{copy}");
            }
        }

        using var image = Qcow2Image.Open(path, new Qcow2OpenOptions().WithDedup(new DedupOptions { Enable = false }));
        return image.GetDedupStatistics().UniqueClusters;
    }

    /// <summary>FAT32 whose data area starts on a cluster boundary, so each 4 KiB file cluster fills one image cluster.</summary>
    private static FatFileSystem FormatAligned(PartitionInfo partition, Geometry geometry, int clusterSize)
    {
        (partition.FirstSector * 512 % clusterSize).ShouldBe(0);
        var stream = partition.Open();
        short reserved = 32;
        for (var attempt = 0; attempt < 2; attempt++)
        {
            stream.Position = 0;
            using (FatFileSystem.FormatPartition(stream, "DEDUP", geometry, (int)partition.FirstSector, (int)partition.SectorCount, reserved))
            {
            }

            var boot = new byte[512];
            stream.Position = 0;
            stream.ReadExactly(boot);
            var dataStart = (BinaryPrimitives.ReadUInt16LittleEndian(boot.AsSpan(14)) + (boot[16] * (long)BinaryPrimitives.ReadUInt32LittleEndian(boot.AsSpan(36)))) * 512;
            if (dataStart % clusterSize == 0)
            {
                break;
            }

            reserved += (short)((clusterSize - (dataStart % clusterSize)) / 512);
        }

        stream.Position = 0;
        return new FatFileSystem(stream, Ownership.Dispose);
    }
}
