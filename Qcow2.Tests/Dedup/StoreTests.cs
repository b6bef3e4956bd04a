using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Dedup.Stores;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>The log store's cuckoo table and the hash store's incarnations (issue 4, acceptance 5).</summary>
[TestFixture]
public class StoreTests
{
    [TestCase(8)]
    [TestCase(12)]
    public void Cuckoo_table_with_buckets_of_4_fills_beyond_90_percent_before_reporting_full(int order)
    {
        var store = new LogStore(order, seed: 1);
        var inserted = 0;
        while (store.Insert(Entry(inserted)) != InsertOutcome.Full)
        {
            inserted++;
        }

        TestContext.Out.WriteLine($"order {order}: {store.FillRate:P1} of {store.Capacity} slots used when full");
        store.FillRate.ShouldBeGreaterThanOrEqualTo(0.90);
        store.Count.ShouldBe(inserted);
        for (var i = 0; i < inserted; i++)
        {
            store.TryGet(Entry(i).Hash, out var found).ShouldBeTrue($"entry {i} lost by kicks");
            found.HostOffset.ShouldBe(Entry(i).HostOffset);
        }

        store.TryGet(Entry(inserted).Hash, out _).ShouldBeFalse("a failed insert must leave the table unchanged");
    }

    [Test]
    public void Inserting_an_equal_hash_replaces_the_entry()
    {
        var store = new LogStore(4);
        store.Insert(Entry(1)).ShouldBe(InsertOutcome.Inserted);
        store.Insert(Entry(1) with { HostOffset = 999 * 65536 }).ShouldBe(InsertOutcome.Replaced);
        store.Count.ShouldBe(1);
        store.TryGet(Entry(1).Hash, out var entry).ShouldBeTrue();
        entry.HostOffset.ShouldBe(999 * 65536);
    }

    [Test]
    public void A_frozen_incarnation_finds_every_entry_with_one_block_read_and_nothing_else()
    {
        var store = new LogStore(6, seed: 2);
        var count = 0;
        while (store.FillRate < 0.85)
        {
            store.Insert(Entry(count++));
        }

        var device = new MemoryIndexDevice((int)Incarnation.AreaBytes(6));
        var incarnation = Incarnation.Freeze(store, generation: 3, offset: 0, device);
        incarnation.Entries.ShouldBe(count);
        var reloaded = new Incarnation(3, 6, 0, count, incarnation.FirstSequence, incarnation.EndSequence);
        var falsePositives = 0;
        Find(reloaded, Entry(0).Hash, device, ref falsePositives).ShouldBeEmpty("lookups miss until the filter is loaded");
        reloaded.LoadFilter(device);
        for (var i = 0; i < count; i++)
        {
            Find(reloaded, Entry(i).Hash, device, ref falsePositives).ShouldHaveSingleItem().ShouldBe(Entry(i));
        }

        falsePositives = 0;
        for (var i = count; i < count + 2000; i++)
        {
            Find(reloaded, Entry(i).Hash, device, ref falsePositives).ShouldBeEmpty();
        }

        // A miss reads a block only when one of 8 tags equals the alternate bucket: about 8 × fill / buckets.
        TestContext.Out.WriteLine($"{falsePositives} false-positive block reads for 2000 misses");
        falsePositives.ShouldBeLessThan((int)(2000 * 8 * 0.9 / 64 * 1.6));
    }

    [Test]
    public void Buckets_never_straddle_table_blocks()
    {
        Incarnation.BucketsPerBlock.ShouldBe(16);
        (Incarnation.BucketsPerBlock * LogStore.SlotsPerBucket * IndexEntry.Size).ShouldBe(Incarnation.BlockSize);
        Incarnation.TagSize(15).ShouldBe(2);
        Incarnation.TagSize(16).ShouldBe(4);
    }

    [Test]
    public void Index_entries_round_trip_and_reject_damage()
    {
        var entry = Entry(5);
        var bytes = new byte[IndexEntry.Size];
        entry.Write(bytes);
        IndexEntry.TryRead(bytes, out var read).ShouldBeTrue();
        read.ShouldBe(entry);
        bytes[40] ^= 1;
        IndexEntry.TryRead(bytes, out _).ShouldBeFalse();
        IndexEntry.TryRead(new byte[IndexEntry.Size], out _).ShouldBeFalse();
    }

    private static List<IndexEntry> Find(Incarnation incarnation, ClusterHash hash, MemoryIndexDevice device, ref int falsePositives)
    {
        var found = new IndexEntry[Incarnation.MaxMatches];
        var count = incarnation.Lookup(hash, device, found, out var misses);
        falsePositives += misses;
        return [.. found[..count]];
    }

    private static IndexEntry Entry(int i) =>
        new(ClusterHash.Compute(BitConverter.GetBytes(i)), (i + 1) * 65536L, i * 65536L, i + 1, 1);
}
