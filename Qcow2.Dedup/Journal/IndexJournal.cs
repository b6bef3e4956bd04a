using System.Buffers.Binary;

namespace QcowDedup.Qcow2.Dedup.Journal;

/// <summary>One entry read back from the journal.</summary>
/// <param name="Offset">Byte offset of the entry inside the journal.</param>
/// <param name="Type">The entry type.</param>
/// <param name="Payload">The entry's payload.</param>
internal readonly record struct JournalRecord(long Offset, byte Type, byte[] Payload);

/// <summary>
/// An append-only log inside the image made of fixed-size blocks (after the design of the
/// qcow2 journal RFC). Entries are <c>{size, type, payload}</c> with size counting the two header
/// bytes, at most 254, and never crossing a block; an END entry closes a block and sends readers
/// to the next one; erased bytes (0xFF) mean "no entry". Every block opens with a block-start
/// entry naming the journal generation and the block number, so after a recycle the blocks of
/// the previous cycle read as the end of the journal instead of being replayed. Nothing reaches
/// the device before <see cref="Flush"/>: completed blocks wait in memory, so the owner decides
/// when the journal may be written (after the data its entries name is durable).
/// </summary>
internal sealed class IndexJournal
{
    /// <summary>Bytes per journal block.</summary>
    public const int BlockSize = 4096;

    /// <summary>Largest entry, header included.</summary>
    public const int MaxEntrySize = 254;

    /// <summary>Erased bytes: no entry here, the journal ends.</summary>
    public const byte TypeNone = 0xFF;

    /// <summary>The rest of the block is unused; continue at the next block.</summary>
    public const byte TypeEnd = 0x01;

    /// <summary>First entry of every block: generation and block number.</summary>
    public const byte TypeBlockStart = 0x02;

    /// <summary>Types below this are the journal's own.</summary>
    public const byte FirstUserType = 0x10;

    private const int HeaderSize = 2;
    private const int BlockStartSize = HeaderSize + 8;

    private readonly IIndexDevice _device;
    private readonly byte[] _block = new byte[BlockSize];
    private readonly List<(int Index, byte[] Data)> _pending = [];
    private int _blockIndex;
    private int _position;
    private bool _dirty;

    public IndexJournal(IIndexDevice device, long offset, int blocks, uint generation)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blocks, 1);
        _device = device;
        Offset = offset;
        Blocks = blocks;
        Generation = generation;
        StartBlock(0);
    }

    /// <summary>Host offset of the journal area.</summary>
    public long Offset { get; }

    /// <summary>Blocks in the area.</summary>
    public int Blocks { get; }

    /// <summary>Generation written into every block of the current cycle.</summary>
    public uint Generation { get; private set; }

    /// <summary>Bytes of the journal in use (whole blocks before the current one, plus the current one's fill).</summary>
    public long UsedBytes => ((long)_blockIndex * BlockSize) + _position;

    /// <summary>Bytes the whole area holds.</summary>
    public long CapacityBytes => (long)Blocks * BlockSize;

    /// <summary>Whether an entry of the largest size still fits.</summary>
    public bool IsFull => _blockIndex == Blocks - 1 && !Fits(MaxEntrySize);

    /// <summary>Whether unwritten entries wait in memory.</summary>
    public bool IsDirty => _dirty || _pending.Count > 0;

    /// <summary>Completed blocks waiting for <see cref="Flush"/>.</summary>
    public int PendingBlocks => _pending.Count;

    /// <summary>Bytes a journal must have to hold <paramref name="entries"/> entries of <paramref name="entrySize"/> bytes.</summary>
    public static int BlocksFor(long entries, int entrySize)
    {
        var perBlock = (BlockSize - BlockStartSize - HeaderSize) / entrySize;
        return (int)Math.Max(1, (entries + perBlock - 1) / perBlock);
    }

    /// <summary>
    /// Appends an entry and returns its offset inside the journal, or −1 when the journal is full.
    /// A full block is closed with an END entry and kept for the next <see cref="Flush"/>.
    /// </summary>
    public long Append(byte type, ReadOnlySpan<byte> payload)
    {
        if (type < FirstUserType || type == TypeNone)
        {
            throw new ArgumentOutOfRangeException(nameof(type), type, "Entry types 0..15 and 255 belong to the journal itself.");
        }

        var size = HeaderSize + payload.Length;
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, MaxEntrySize, nameof(payload));
        if (!Fits(size))
        {
            if (_blockIndex == Blocks - 1)
            {
                return -1;
            }

            _block[_position] = HeaderSize;
            _block[_position + 1] = TypeEnd;
            _pending.Add((_blockIndex, _block.ToArray()));
            StartBlock(_blockIndex + 1);
        }

        var offset = ((long)_blockIndex * BlockSize) + _position;
        _block[_position] = (byte)size;
        _block[_position + 1] = type;
        payload.CopyTo(_block.AsSpan(_position + HeaderSize));
        _position += size;
        _dirty = true;
        return offset;
    }

    /// <summary>Writes the completed blocks, then the current one if it holds unwritten entries.</summary>
    public void Flush()
    {
        foreach (var (index, data) in _pending)
        {
            _device.Write(Offset + ((long)index * BlockSize), data);
        }

        _pending.Clear();
        if (_dirty)
        {
            WriteBlock();
        }
    }

    /// <summary>
    /// Reads every entry of the current generation from the start, stopping at erased bytes, a
    /// block of another cycle, or a malformed entry. Afterwards appends continue after the last
    /// entry read (resume after replay).
    /// </summary>
    public List<JournalRecord> ReadAll()
    {
        var records = new List<JournalRecord>();
        var buffer = new byte[BlockSize];
        var stopBlock = 0;
        var stopPosition = BlockStartSize;
        for (var block = 0; block < Blocks; block++)
        {
            _device.Read(Offset + ((long)block * BlockSize), buffer);
            if (!IsBlockStart(buffer, block))
            {
                stopBlock = block;
                stopPosition = -1;
                break;
            }

            var (position, endOfJournal) = ReadBlock(buffer, block, records);
            if (endOfJournal || block == Blocks - 1)
            {
                stopBlock = block;
                stopPosition = position;
                break;
            }
        }

        Resume(stopBlock, stopPosition, buffer);
        return records;
    }

    /// <summary>Starts a new cycle: the journal is empty from block 0 with a new generation.</summary>
    public void Recycle(uint generation)
    {
        _pending.Clear();
        Generation = generation;
        StartBlock(0);
        _dirty = true; // erasing block 0 makes the new cycle durable even before it holds entries
    }

    private bool Fits(int size) => _position + size + HeaderSize <= BlockSize;

    private bool IsBlockStart(ReadOnlySpan<byte> block, int index) =>
        block[0] == BlockStartSize && block[1] == TypeBlockStart
        && BinaryPrimitives.ReadUInt32BigEndian(block[2..]) == Generation
        && BinaryPrimitives.ReadUInt32BigEndian(block[6..]) == (uint)index;

    /// <summary>Collects the entries of one block; returns where reading stopped and whether the journal ends there.</summary>
    private static (int Position, bool EndOfJournal) ReadBlock(byte[] buffer, int block, List<JournalRecord> records)
    {
        var position = BlockStartSize;
        while (BlockSize - position >= HeaderSize)
        {
            var size = buffer[position];
            var type = buffer[position + 1];
            if (size == TypeNone)
            {
                return (position, true);
            }

            if (type == TypeEnd)
            {
                return (position, false);
            }

            if (size < HeaderSize || position + size > BlockSize)
            {
                return (position, true); // torn or foreign bytes: nothing after them is trusted
            }

            records.Add(new JournalRecord(((long)block * BlockSize) + position, type, buffer.AsSpan(position + HeaderSize, size - HeaderSize).ToArray()));
            position += size;
        }

        return (position, false);
    }

    private void Resume(int block, int position, byte[] lastBlock)
    {
        if (position < 0)
        {
            StartBlock(block);
            return;
        }

        _blockIndex = block;
        Array.Fill(_block, TypeNone);
        lastBlock.AsSpan(0, position).CopyTo(_block);
        _position = position;
        _dirty = false;
        // A block too full for another entry is closed by the next Append, not here: replaying the
        // journal writes nothing, so a read-only open can replay it.
    }

    private void StartBlock(int index)
    {
        _blockIndex = index;
        Array.Fill(_block, TypeNone);
        _block[0] = BlockStartSize;
        _block[1] = TypeBlockStart;
        BinaryPrimitives.WriteUInt32BigEndian(_block.AsSpan(2), Generation);
        BinaryPrimitives.WriteUInt32BigEndian(_block.AsSpan(6), (uint)index);
        _position = BlockStartSize;
        _dirty = false;
    }

    private void WriteBlock()
    {
        _device.Write(Offset + ((long)_blockIndex * BlockSize), _block);
        _dirty = false;
    }
}
