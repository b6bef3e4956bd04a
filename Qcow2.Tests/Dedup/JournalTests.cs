using QcowDedup.Qcow2.Dedup.Journal;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>The journal's entry and block rules (issue 4, acceptance 5).</summary>
[TestFixture]
public class JournalTests
{
    private const byte Type = 0x20;

    [Test]
    public void Entries_never_cross_a_block_and_an_end_entry_sends_readers_to_the_next_block()
    {
        var device = new MemoryIndexDevice(3 * IndexJournal.BlockSize);
        var journal = new IndexJournal(device, 0, blocks: 3, generation: 7);
        var offsets = new List<long>();
        for (var i = 0; i < 45; i++) // 20 entries of 202 bytes fit a block after its 10-byte block start
        {
            offsets.Add(journal.Append(Type, Payload(i, 200)));
        }

        offsets.ShouldAllBe(o => o >= 0);
        offsets.ShouldAllBe(o => (o % IndexJournal.BlockSize) + 202 <= IndexJournal.BlockSize);
        offsets.Select(o => o / IndexJournal.BlockSize).Distinct().Count().ShouldBe(3);
        journal.Flush();

        // Block 0 ends with an END entry; what follows it is erased.
        var firstInBlock1 = offsets.First(o => o >= IndexJournal.BlockSize);
        var lastInBlock0 = offsets.Last(o => o < IndexJournal.BlockSize);
        var endAt = (int)lastInBlock0 + 202;
        device.Bytes[endAt].ShouldBe((byte)2);
        device.Bytes[endAt + 1].ShouldBe(IndexJournal.TypeEnd);
        device.Bytes.AsSpan(endAt + 2, IndexJournal.BlockSize - endAt - 2).ToArray().ShouldAllBe(b => b == IndexJournal.TypeNone);
        firstInBlock1.ShouldBe(IndexJournal.BlockSize + 10);

        var reread = new IndexJournal(device, 0, 3, 7).ReadAll();
        reread.Select(r => r.Offset).ShouldBe(offsets);
        reread[13].Payload.ShouldBe(Payload(13, 200));
    }

    [Test]
    public void Nothing_reaches_the_device_before_a_flush()
    {
        var device = new MemoryIndexDevice(3 * IndexJournal.BlockSize);
        var journal = new IndexJournal(device, 0, blocks: 3, generation: 9);
        for (var i = 0; i < 45; i++)
        {
            journal.Append(Type, Payload(i, 200));
        }

        journal.PendingBlocks.ShouldBe(2);
        device.Bytes.ShouldAllBe(b => b == 0, "entries must wait until their clusters are durable");
        journal.Flush();
        journal.PendingBlocks.ShouldBe(0);
        new IndexJournal(device, 0, 3, 9).ReadAll().Count.ShouldBe(45);
    }

    [Test]
    public void A_full_journal_refuses_appends()
    {
        var journal = new IndexJournal(new MemoryIndexDevice(IndexJournal.BlockSize), 0, blocks: 1, generation: 1);
        var appended = 0;
        while (journal.Append(Type, Payload(appended, 100)) >= 0)
        {
            appended++;
        }

        appended.ShouldBe((IndexJournal.BlockSize - 10 - 2) / 102);
        journal.IsFull.ShouldBeTrue();
    }

    [Test]
    public void Reading_resumes_appending_after_the_last_entry()
    {
        var device = new MemoryIndexDevice(2 * IndexJournal.BlockSize);
        var journal = new IndexJournal(device, 0, 2, 5);
        journal.Append(Type, Payload(1, 50));
        journal.Append(Type, Payload(2, 50));
        journal.Flush();

        var resumed = new IndexJournal(device, 0, 2, 5);
        resumed.ReadAll().Count.ShouldBe(2);
        var third = resumed.Append(Type, Payload(3, 50));
        third.ShouldBe(10 + 52 + 52);
        resumed.Flush();
        new IndexJournal(device, 0, 2, 5).ReadAll().Select(r => r.Payload[0]).ShouldBe(new byte[] { 1, 2, 3 });
    }

    [Test]
    public void Recycling_starts_a_new_generation_and_old_blocks_never_replay()
    {
        var device = new MemoryIndexDevice(3 * IndexJournal.BlockSize);
        var journal = new IndexJournal(device, 0, 3, 5);
        for (var i = 0; i < 50; i++)
        {
            journal.Append(Type, Payload(i, 120));
        }

        journal.Flush();
        journal.Recycle(6);
        journal.Append(Type, Payload(99, 10));
        journal.Flush();

        var records = new IndexJournal(device, 0, 3, 6).ReadAll();
        records.ShouldHaveSingleItem().Payload[0].ShouldBe((byte)99);
        new IndexJournal(device, 0, 3, 5).ReadAll().ShouldBeEmpty();
    }

    [Test]
    public void Torn_or_foreign_bytes_end_the_journal_instead_of_being_replayed()
    {
        var device = new MemoryIndexDevice(IndexJournal.BlockSize);
        var journal = new IndexJournal(device, 0, 1, 3);
        journal.Append(Type, Payload(1, 30));
        journal.Append(Type, Payload(2, 30));
        journal.Flush();
        device.Bytes[10 + 32] = 1; // second entry's size byte: 1 is below the header size
        new IndexJournal(device, 0, 1, 3).ReadAll().ShouldHaveSingleItem();
    }

    [Test]
    public void Reserved_types_and_oversized_entries_are_refused()
    {
        var journal = new IndexJournal(new MemoryIndexDevice(IndexJournal.BlockSize), 0, 1, 1);
        Should.Throw<ArgumentOutOfRangeException>(() => journal.Append(IndexJournal.TypeEnd, [1]));
        Should.Throw<ArgumentOutOfRangeException>(() => journal.Append(IndexJournal.TypeNone, [1]));
        Should.Throw<ArgumentOutOfRangeException>(() => journal.Append(Type, new byte[253]));
    }

    private static byte[] Payload(int seed, int length)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        bytes[0] = (byte)seed;
        return bytes;
    }
}
