using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Tests.Format;

[TestFixture]
public class RefcountBlockTests
{
    [Test]
    public void Sub_byte_widths_pack_from_the_least_significant_bit_like_qemu()
    {
        var block = new byte[4];
        RefcountBlock.Set(block, 0, refcountOrder: 0, 1);
        RefcountBlock.Set(block, 3, refcountOrder: 0, 1);
        block[0].ShouldBe((byte)0b0000_1001);

        Array.Clear(block);
        RefcountBlock.Set(block, 5, refcountOrder: 1, 3); // byte 1, bits 2-3
        block[1].ShouldBe((byte)0b0000_1100);

        Array.Clear(block);
        RefcountBlock.Set(block, 3, refcountOrder: 2, 0xA); // byte 1, high nibble
        block[1].ShouldBe((byte)0xA0);
    }

    [Test]
    public void Wide_entries_are_big_endian()
    {
        var block = new byte[32];
        RefcountBlock.Set(block, 1, 4, 0x0102);
        block[2..4].ShouldBe(new byte[] { 1, 2 });
        RefcountBlock.Set(block, 1, 5, 0x01020304);
        block[4..8].ShouldBe(new byte[] { 1, 2, 3, 4 });
        RefcountBlock.Set(block, 2, 6, 0x0102030405060708);
        block[16..24].ShouldBe(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
    }

    [Test]
    public void Every_width_round_trips_its_maximum_without_touching_neighbours([Range(0, 6)] int order)
    {
        var block = new byte[64];
        var max = RefcountBlock.MaxRefcount(order);
        RefcountBlock.Set(block, 3, order, max);
        RefcountBlock.Get(block, 3, order).ShouldBe(max);
        RefcountBlock.Get(block, 2, order).ShouldBe(0UL);
        RefcountBlock.Get(block, 4, order).ShouldBe(0UL);
    }

    [Test]
    public void Values_beyond_the_width_are_refused()
    {
        Should.Throw<ArgumentOutOfRangeException>(() => RefcountBlock.Set(new byte[8], 0, 2, 16));
    }

    [Test]
    public void Entries_per_block_follow_the_spec()
    {
        RefcountBlock.EntriesPerBlock(16, 4).ShouldBe(32768);
        RefcountBlock.EntriesPerBlock(9, 6).ShouldBe(64);
        RefcountBlock.EntriesPerBlock(9, 0).ShouldBe(4096);
    }
}
