using System.Buffers.Binary;
using System.Numerics;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// A persistent dirty bitmap in memory: one bit per granule of the disk, set when the granule is
/// written. Held in chunks of one image cluster of bitmap data each — the unit the bitmap table
/// stores — so a bitmap costs memory only where bits are set (or were stored), never for the
/// whole disk at once; a chunk the table marks all ones shares one array. Not thread-safe: the
/// owning <see cref="PersistentBitmaps"/> serializes access.
/// </summary>
internal sealed class DirtyBitmap
{
    private readonly int _chunkBitsLog2;
    private readonly ulong[] _ones;
    private ulong[]?[] _chunks;

    /// <param name="name">The bitmap's name.</param>
    /// <param name="granularityBits">log2 of the guest bytes one bit covers.</param>
    /// <param name="clusterBits">log2 of the image's cluster size (one chunk of bitmap data).</param>
    /// <param name="diskSize">Guest bytes covered.</param>
    /// <param name="enabled">Whether writes set bits (the directory's auto flag).</param>
    public DirtyBitmap(string name, int granularityBits, int clusterBits, long diskSize, bool enabled)
    {
        Name = name;
        GranularityBits = granularityBits;
        Enabled = enabled;
        _chunkBitsLog2 = clusterBits + 3;
        _ones = new ulong[(1 << clusterBits) / sizeof(ulong)];
        _ones.AsSpan().Fill(ulong.MaxValue);
        DiskSize = diskSize;
        _chunks = new ulong[ChunkCount][];
    }

    public string Name { get; }

    public int GranularityBits { get; }

    public long Granularity => 1L << GranularityBits;

    /// <summary>Whether guest writes set bits.</summary>
    public bool Enabled { get; set; }

    /// <summary>Guest bytes the bitmap covers (the disk size).</summary>
    public long DiskSize { get; private set; }

    /// <summary>Whether the bits changed since they were loaded (they must be stored anew).</summary>
    public bool Modified { get; set; }

    /// <summary>Bits in the bitmap: one per granule of the disk, the last one partial.</summary>
    public long BitCount => (DiskSize + Granularity - 1) >> GranularityBits;

    /// <summary>Chunks (bitmap table entries) the bitmap needs.</summary>
    public int ChunkCount => (int)((BitCount + (1L << _chunkBitsLog2) - 1) >> _chunkBitsLog2);

    private int WordsPerChunk => _ones.Length;

    /// <summary>Sets the bits of every granule the guest range touches (the bitmap's enabled state is the caller's business).</summary>
    public void Mark(long offset, long length)
    {
        if (length <= 0 || offset >= DiskSize)
        {
            return;
        }

        var first = offset >> GranularityBits;
        var last = Math.Min((offset + length - 1) >> GranularityBits, BitCount - 1);
        SetBits(first, last);
        Modified = true;
    }

    /// <summary>Clears every bit.</summary>
    public void Clear()
    {
        Array.Clear(_chunks);
        Modified = true;
    }

    /// <summary>Sets every bit set in <paramref name="source"/> (granularities may differ; sizes must not).</summary>
    public void Merge(DirtyBitmap source)
    {
        foreach (var (offset, length) in source.DirtyRanges())
        {
            Mark(offset, length);
        }

        Modified = true;
    }

    /// <summary>Follows a resize of the disk: new granules start clean, bits past a shrunk end go.</summary>
    public void Resize(long diskSize)
    {
        DiskSize = diskSize;
        var chunks = new ulong[ChunkCount][];
        Array.Copy(_chunks, chunks, Math.Min(chunks.Length, _chunks.Length));
        _chunks = chunks;
        ClearTail();
        Modified = true;
    }

    /// <summary>The dirty guest ranges, in order, adjacent granules merged, the last one cut at the disk's end.</summary>
    public IEnumerable<(long Offset, long Length)> DirtyRanges()
    {
        long start = -1;
        long end = -1;
        for (var chunk = 0; chunk < _chunks.Length; chunk++)
        {
            if (_chunks[chunk] is not { } words)
            {
                continue;
            }

            var firstBit = (long)chunk << _chunkBitsLog2;
            for (var w = 0; w < words.Length; w++)
            {
                var word = words[w];
                while (word != 0)
                {
                    var low = BitOperations.TrailingZeroCount(word);
                    var run = BitOperations.TrailingZeroCount(~(word >> low)); // the bits above the word are zero: run ≤ 64 − low
                    var bit = firstBit + ((long)w << 6) + low;
                    word = low + run >= 64 ? 0 : word & ~(((1UL << run) - 1) << low);
                    if (bit == end)
                    {
                        end += run;
                    }
                    else
                    {
                        if (start >= 0)
                        {
                            yield return Range(start, end);
                        }

                        start = bit;
                        end = bit + run;
                    }
                }
            }
        }

        if (start >= 0)
        {
            yield return Range(start, end);
        }
    }

    /// <summary>Whether chunk <paramref name="index"/> has any bit set.</summary>
    public bool ChunkHasBits(int index) => _chunks[index] is { } words && (ReferenceEquals(words, _ones) || words.AsSpan().ContainsAnyExcept(0UL));

    /// <summary>Writes chunk <paramref name="index"/> as stored on disk (bit i of byte j is granule 8j+i), tail bits zero.</summary>
    public void WriteChunk(int index, Span<byte> cluster)
    {
        cluster.Clear();
        if (_chunks[index] is not { } words)
        {
            return;
        }

        for (var w = 0; w < words.Length; w++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(cluster[(w * 8)..], words[w]);
        }

        var lastBit = BitCount - ((long)index << _chunkBitsLog2);
        if (lastBit < (1L << _chunkBitsLog2))
        {
            ClearBitsFrom(cluster, (int)lastBit);
        }
    }

    /// <summary>Loads chunk <paramref name="index"/> from its stored bytes (tail bits past the disk ignored).</summary>
    public void ReadChunk(int index, ReadOnlySpan<byte> cluster)
    {
        var words = new ulong[WordsPerChunk];
        for (var w = 0; w < words.Length; w++)
        {
            words[w] = BinaryPrimitives.ReadUInt64LittleEndian(cluster[(w * 8)..]);
        }

        _chunks[index] = words.AsSpan().ContainsAnyExcept(0UL) ? words : null;
        if (index == _chunks.Length - 1)
        {
            ClearTail();
        }
    }

    /// <summary>Marks chunk <paramref name="index"/> all ones (a table entry without data, bit 0 set).</summary>
    public void SetChunkAllOnes(int index)
    {
        _chunks[index] = _ones;
        if (index == _chunks.Length - 1)
        {
            ClearTail();
        }
    }

    private (long, long) Range(long startBit, long endBit)
    {
        var offset = startBit << GranularityBits;
        return (offset, Math.Min(endBit << GranularityBits, DiskSize) - offset);
    }

    private void SetBits(long first, long last)
    {
        for (var bit = first; bit <= last;)
        {
            var chunk = (int)(bit >> _chunkBitsLog2);
            var chunkEnd = Math.Min(last, (((long)chunk + 1) << _chunkBitsLog2) - 1);
            var words = _chunks[chunk];
            if (!ReferenceEquals(words, _ones))
            {
                words ??= _chunks[chunk] = new ulong[WordsPerChunk];
                var local = bit - ((long)chunk << _chunkBitsLog2);
                var localEnd = chunkEnd - ((long)chunk << _chunkBitsLog2);
                for (var b = local; b <= localEnd;)
                {
                    var word = (int)(b >> 6);
                    var from = (int)(b & 63);
                    var to = (int)Math.Min(63, localEnd - ((long)word << 6));
                    var mask = (to == 63 ? ulong.MaxValue : (1UL << (to + 1)) - 1) & ~((1UL << from) - 1);
                    words[word] |= mask;
                    b = ((long)word + 1) << 6;
                }
            }

            bit = chunkEnd + 1;
        }
    }

    /// <summary>Clears the bits of the last chunk past <see cref="BitCount"/> (they describe no disk).</summary>
    private void ClearTail()
    {
        if (_chunks.Length == 0 || _chunks[^1] is not { } words)
        {
            return;
        }

        var used = BitCount - ((long)(_chunks.Length - 1) << _chunkBitsLog2);
        if (used >= (1L << _chunkBitsLog2))
        {
            return;
        }

        if (ReferenceEquals(words, _ones))
        {
            words = _chunks[^1] = (ulong[])_ones.Clone();
        }

        var word = (int)(used >> 6);
        if ((used & 63) != 0)
        {
            words[word] &= (1UL << (int)(used & 63)) - 1;
            word++;
        }

        words.AsSpan(word).Clear();
        if (!words.AsSpan().ContainsAnyExcept(0UL))
        {
            _chunks[^1] = null;
        }
    }

    private static void ClearBitsFrom(Span<byte> cluster, int bit)
    {
        var bytePosition = bit >> 3;
        if ((bit & 7) != 0)
        {
            cluster[bytePosition] &= (byte)((1 << (bit & 7)) - 1);
            bytePosition++;
        }

        cluster[bytePosition..].Clear();
    }
}
