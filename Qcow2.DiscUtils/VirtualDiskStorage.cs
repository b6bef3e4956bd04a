using DiscUtils;
using DiscUtils.Streams;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// The guest content of a DiscUtils disk as an <see cref="IStorage"/>: offset = guest offset, length =
/// capacity, and the disk's stored extents answer <see cref="IStorage.TryGetDataExtent"/>. DiscUtils
/// streams keep one position, so each request holds a lock for its seek and transfer.
/// </summary>
internal sealed class VirtualDiskStorage(VirtualDisk disk, string path, bool writable, FileStream? file = null) : IStorage
{
    private readonly Lock _lock = new();

    public long Length => disk.Capacity;

    public bool CanWrite => writable;

    public string? Path => path;

    public int Read(long offset, Span<byte> buffer)
    {
        lock (_lock)
        {
            var content = disk.Content;
            var count = (int)Math.Clamp(content.Length - offset, 0, buffer.Length);
            content.Position = offset;
            content.ReadExactly(buffer[..count]);
            return count;
        }
    }

    public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        ValueTask.FromResult(Read(offset, buffer.Span));

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        if (!writable)
        {
            throw new NotSupportedException($"{path} is open read-only.");
        }

        if (offset + buffer.Length > Length)
        {
            throw new IOException($"A write at {offset} of {buffer.Length} bytes lies past the end of {path} ({Length} bytes; its format fixes the size at creation).");
        }

        lock (_lock)
        {
            disk.Content.Position = offset;
            disk.Content.Write(buffer);
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        Write(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    /// <summary>The size the disk was created for; a format may round its capacity up (VHD to whole cylinders).</summary>
    public long RequestedLength { get; init; } = -1;

    /// <summary>
    /// A disk's size is fixed when it is created; setting it to that size (or to the size asked for
    /// when the format rounded it up) is allowed, as a copy does first. The rounded-up tail reads as zeros.
    /// </summary>
    public void SetLength(long length)
    {
        if (length != Length && !(length >= RequestedLength && length <= Length))
        {
            throw new NotSupportedException($"{path} holds {Length} bytes; its size cannot change to {length}.");
        }
    }

    /// <summary>Flushes DiscUtils' buffers and, where the file is ours, makes it durable.</summary>
    public void Flush()
    {
        lock (_lock)
        {
            try
            {
                disk.Content.Flush();
            }
            catch (NotImplementedException)
            {
                // DiscUtils 0.16's VHDX content stream has no Flush; it writes straight to the file, flushed below.
            }

            file?.Flush(flushToDisk: true);
        }
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        Flush();
        return ValueTask.CompletedTask;
    }

    public bool TryGetDataExtent(long offset, out bool isData, out long extentEnd)
    {
        lock (_lock)
        {
            StreamExtent? next;
            try
            {
                next = disk.Content.GetExtentsInRange(offset, Length - offset).FirstOrDefault();
            }
            catch (NotSupportedException)
            {
                // The format cannot say where it stores data (DiscUtils 0.16 VHDX): every byte counts as data.
                (isData, extentEnd) = (true, Length);
                return false;
            }

            if (next is null)
            {
                (isData, extentEnd) = (false, Length);
            }
            else if (next.Start <= offset)
            {
                (isData, extentEnd) = (true, next.Start + next.Length);
            }
            else
            {
                (isData, extentEnd) = (false, next.Start);
            }

            return true;
        }
    }

    public void Dispose() => disk.Dispose();
}
