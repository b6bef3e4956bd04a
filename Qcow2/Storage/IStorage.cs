namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Positional I/O over the bytes of one file (an image, a backing file or a data file). It is the
/// only layer that touches files, so tests can wrap it to fail or tear writes and to simulate
/// crashes. Implementations must allow concurrent calls at different offsets.
/// </summary>
public interface IStorage : IDisposable
{
    /// <summary>Current length in bytes.</summary>
    long Length { get; }

    /// <summary>Whether writes are allowed.</summary>
    bool CanWrite { get; }

    /// <summary>Full path of the file, or null when the storage is not a named file.</summary>
    string? Path { get; }

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes; fewer only at end of file.</summary>
    int Read(long offset, Span<byte> buffer);

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes; fewer only at end of file.</summary>
    ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Writes all of <paramref name="buffer"/>, extending the file if needed.</summary>
    void Write(long offset, ReadOnlySpan<byte> buffer);

    /// <summary>Writes all of <paramref name="buffer"/>, extending the file if needed.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Truncates or extends the file.</summary>
    void SetLength(long length);

    /// <summary>Makes every completed write durable.</summary>
    void Flush();

    /// <summary>Makes every completed write durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Reserves disk space for [offset, offset + length) without writing it (fallocate), extending
    /// the file if needed. Storages that cannot reserve space just extend the file.
    /// </summary>
    void Reserve(long offset, long length)
    {
        if (offset + length > Length)
        {
            SetLength(offset + length);
        }
    }

    /// <summary>
    /// Gives the disk space of [offset, offset + length) back to the file system (a hole that reads
    /// as zeros; the length stays). Returns false when the storage cannot, and then nothing changed.
    /// </summary>
    bool TryPunchHole(long offset, long length) => false;

    /// <summary>
    /// Finds where the file's allocated data starts and ends around <paramref name="offset"/>
    /// (SEEK_DATA/SEEK_HOLE). Returns false when the storage cannot tell; then every byte counts as data.
    /// </summary>
    bool TryGetDataExtent(long offset, out bool isData, out long extentEnd)
    {
        isData = true;
        extentEnd = Length;
        return false;
    }
}
