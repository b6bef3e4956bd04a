using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Tests.Format;

/// <summary>Every mask and shift pinned against entries dumped from images qemu-img 7.2 wrote.</summary>
[TestFixture]
public class EntryCodecTests
{
    [Test]
    public void Fresh_write_entry_is_a_normal_copied_cluster()
    {
        var entry = new L2Entry(0x8000000000050000);
        entry.GetClusterType(extendedL2: false, externalDataFile: false).ShouldBe(ClusterType.Normal);
        entry.IsCopied.ShouldBeTrue();
        entry.HostOffset.ShouldBe(0x50000);
        entry.StandardReservedBits.ShouldBe(0UL);
        L2Entry.Normal(0x50000, copied: true).Raw.ShouldBe(0x8000000000050000);
    }

    [Test]
    public void Zero_write_over_allocated_cluster_keeps_offset_and_copied()
    {
        var entry = new L2Entry(0x8000000000050001);
        entry.GetClusterType(false, false).ShouldBe(ClusterType.ZeroAllocated);
        entry.HostOffset.ShouldBe(0x50000);
        L2Entry.ZeroAllocated(0x50000, copied: true).Raw.ShouldBe(0x8000000000050001);
    }

    [Test]
    public void Zero_write_on_unallocated_cluster_is_zero_plain()
    {
        new L2Entry(0x1).GetClusterType(false, false).ShouldBe(ClusterType.ZeroPlain);
        L2Entry.ZeroPlain.Raw.ShouldBe(1UL);
    }

    [Test]
    public void Zero_flag_is_ignored_with_extended_l2()
    {
        new L2Entry(0x1).GetClusterType(extendedL2: true, externalDataFile: false).ShouldBe(ClusterType.Unallocated);
    }

    [Test]
    public void Offset_zero_with_copied_is_a_cluster_only_with_an_external_data_file()
    {
        var entry = new L2Entry(L2Entry.CopiedFlag);
        entry.GetClusterType(false, externalDataFile: true).ShouldBe(ClusterType.Normal);
        entry.GetClusterType(false, externalDataFile: false).ShouldBe(ClusterType.Unallocated);
    }

    [Test]
    public void Reserved_bits_of_standard_entries_are_detected()
    {
        new L2Entry(0x8000000000050002).StandardReservedBits.ShouldBe(0x2UL);
        new L2Entry(0x0100000000050000).StandardReservedBits.ShouldBe(0x0100000000000000UL);
        L2Entry.StandardReservedMask.ShouldBe(0x3f000000000001feUL);
        L2Entry.OffsetMask.ShouldBe(0x00fffffffffffe00UL);
    }

    [Test]
    public void Compressed_descriptor_from_qemu_img_convert_c_with_64k_clusters()
    {
        var entry = new L2Entry(0x5000000000060014);
        entry.GetClusterType(false, false).ShouldBe(ClusterType.Compressed);
        var descriptor = CompressedClusterDescriptor.Decode(entry, clusterBits: 16);
        descriptor.HostOffset.ShouldBe(0x60014);
        descriptor.SectorCount.ShouldBe(65);
        descriptor.CompressedLength.ShouldBe((65 * 512) - 0x14);
        CompressedClusterDescriptor.SizeShift(16).ShouldBe(54);
    }

    [TestCase(9)]
    [TestCase(12)]
    [TestCase(16)]
    [TestCase(21)]
    public void Compressed_descriptor_round_trips_for_every_cluster_size(int clusterBits)
    {
        var clusterSize = 1 << clusterBits;
        var offset = (3L << 30) + 1234;
        var length = clusterSize - 1;
        var entry = CompressedClusterDescriptor.Encode(offset, length, clusterBits);
        var descriptor = CompressedClusterDescriptor.Decode(entry, clusterBits);
        descriptor.HostOffset.ShouldBe(offset);
        (descriptor.HostOffset + descriptor.CompressedLength).ShouldBeGreaterThanOrEqualTo(offset + length);
        descriptor.CompressedLength.ShouldBeLessThan(length + 512);
        entry.IsCopied.ShouldBeFalse();
    }

    [Test]
    public void Compressed_data_that_needs_too_many_sectors_is_refused()
    {
        // 512-byte clusters leave one bit for extra sectors: at most two sectors.
        Should.Throw<ArgumentOutOfRangeException>(() => CompressedClusterDescriptor.Encode(1000, 1100, clusterBits: 9));
    }

    [Test]
    public void Extended_l2_bitmap_from_a_4k_write_and_an_8k_zero_write()
    {
        // 128 KiB clusters: write 4 KiB at 4 KiB, zero 8 KiB at 64 KiB.
        var entry = new L2Entry(0x80000000000a0000);
        var bitmap = new SubclusterBitmap(0x0003000000000002);
        var type = entry.GetClusterType(extendedL2: true, externalDataFile: false);
        type.ShouldBe(ClusterType.Normal);
        bitmap.GetSubclusterType(type, 0).ShouldBe(SubclusterType.UnallocatedAllocated);
        bitmap.GetSubclusterType(type, 1).ShouldBe(SubclusterType.Normal);
        bitmap.GetSubclusterType(type, 16).ShouldBe(SubclusterType.ZeroAllocated);
        bitmap.GetSubclusterType(type, 17).ShouldBe(SubclusterType.ZeroAllocated);
        bitmap.GetSubclusterType(type, 18).ShouldBe(SubclusterType.UnallocatedAllocated);
    }

    [Test]
    public void Extended_l2_full_cluster_zero_write_has_no_host_cluster()
    {
        var bitmap = SubclusterBitmap.AllZero;
        bitmap.Raw.ShouldBe(0xffffffff00000000UL);
        bitmap.GetSubclusterType(ClusterType.Unallocated, 31).ShouldBe(SubclusterType.ZeroPlain);
    }

    [Test]
    public void Contradictory_subcluster_bits_are_invalid()
    {
        new SubclusterBitmap(0x0000000100000001).GetSubclusterType(ClusterType.Normal, 5).ShouldBe(SubclusterType.Invalid);
        new SubclusterBitmap(0x1).GetSubclusterType(ClusterType.Unallocated, 0).ShouldBe(SubclusterType.Invalid);
    }

    [Test]
    public void Subcluster_ranges()
    {
        SubclusterBitmap.AllocatedRange(0, 32).ShouldBe(0xffffffffUL);
        SubclusterBitmap.AllocatedRange(4, 2).ShouldBe(0x30UL);
        SubclusterBitmap.ZeroRange(4, 2).ShouldBe(0x30UL << 32);
    }

    [Test]
    public void L1_entry_masks()
    {
        var entry = new L1Entry(0x8000000000030000);
        entry.L2TableOffset.ShouldBe(0x30000);
        entry.IsCopied.ShouldBeTrue();
        entry.ReservedBits.ShouldBe(0UL);
        new L1Entry(0x0100000000030001).ReservedBits.ShouldBe(0x0100000000000001UL);
        L1Entry.ReservedMask.ShouldBe(0x7f000000000001ffUL);
    }

    [Test]
    public void Refcount_table_entry_masks()
    {
        new RefcountTableEntry(0x20000).BlockOffset.ShouldBe(0x20000);
        new RefcountTableEntry(0x20001).ReservedBits.ShouldBe(1UL);
    }
}
