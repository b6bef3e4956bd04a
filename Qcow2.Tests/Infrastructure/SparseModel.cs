namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>
/// The expected guest content of a disk, stored sparsely in 64 KiB chunks (absent = zeros), so
/// that disks of a terabyte can be modelled by the bytes actually touched.
/// </summary>
public sealed class SparseModel
{
    private const int ChunkBits = 16;
    private const int ChunkSize = 1 << ChunkBits;
    private readonly Dictionary<long, byte[]> _chunks = [];

    public SparseModel(long size) => Size = size;

    public long Size { get; private set; }

    /// <summary>An independent copy.</summary>
    public SparseModel Clone()
    {
        var copy = new SparseModel(Size);
        foreach (var (key, chunk) in _chunks)
        {
            copy._chunks[key] = (byte[])chunk.Clone();
        }

        return copy;
    }

    public void Read(long offset, Span<byte> destination)
    {
        for (var done = 0; done < destination.Length;)
        {
            var position = offset + done;
            var inChunk = (int)(position & (ChunkSize - 1));
            var count = Math.Min(ChunkSize - inChunk, destination.Length - done);
            var target = destination.Slice(done, count);
            if (position >= Size)
            {
                target.Clear();
            }
            else if (_chunks.TryGetValue(position >> ChunkBits, out var chunk))
            {
                chunk.AsSpan(inChunk, count).CopyTo(target);
            }
            else
            {
                target.Clear();
            }

            done += count;
        }
    }

    public byte[] Read(long offset, int length)
    {
        var buffer = new byte[length];
        Read(offset, buffer);
        return buffer;
    }

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        for (var done = 0; done < source.Length;)
        {
            var position = offset + done;
            var inChunk = (int)(position & (ChunkSize - 1));
            var count = Math.Min(ChunkSize - inChunk, source.Length - done);
            var key = position >> ChunkBits;
            if (!_chunks.TryGetValue(key, out var chunk))
            {
                if (!source.Slice(done, count).ContainsAnyExcept((byte)0))
                {
                    done += count;
                    continue;
                }

                _chunks[key] = chunk = new byte[ChunkSize];
            }

            source.Slice(done, count).CopyTo(chunk.AsSpan(inChunk));
            done += count;
        }
    }

    public void Zero(long offset, long length)
    {
        var zeros = new byte[ChunkSize];
        for (long done = 0; done < length; done += ChunkSize)
        {
            Write(offset + done, zeros.AsSpan(0, (int)Math.Min(ChunkSize, length - done)));
        }
    }

    /// <summary>Copies [offset, offset + length) from another model (e.g. the backing file).</summary>
    public void CopyFrom(SparseModel source, long offset, long length)
    {
        for (long done = 0; done < length; done += ChunkSize)
        {
            var count = (int)Math.Min(ChunkSize, length - done);
            Write(offset + done, source.Read(offset + done, count));
        }
    }

    /// <summary>Changes the size; bytes beyond a shrink are gone, a grow exposes zeros.</summary>
    public void Resize(long newSize)
    {
        if (newSize < Size)
        {
            Zero(newSize, Math.Min(Size, newSize + ChunkSize) - newSize);
            foreach (var key in _chunks.Keys.Where(k => k << ChunkBits >= newSize).ToList())
            {
                _chunks.Remove(key);
            }
        }

        Size = newSize;
    }

    /// <summary>Ranges holding non-zero chunks (for writing a sparse raw copy).</summary>
    public IEnumerable<(long Offset, byte[] Chunk)> Chunks() =>
        _chunks.OrderBy(c => c.Key).Select(c => (c.Key << ChunkBits, c.Value));

    /// <summary>Writes the model as a sparse raw file of exactly <see cref="Size"/> bytes.</summary>
    public void WriteRaw(string path)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        file.SetLength(Size);
        foreach (var (offset, chunk) in Chunks())
        {
            if (offset >= Size)
            {
                continue;
            }

            file.Position = offset;
            file.Write(chunk, 0, (int)Math.Min(chunk.Length, Size - offset));
        }
    }
}
