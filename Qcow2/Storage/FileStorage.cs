using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// A file opened with <see cref="RandomAccess"/>: positional reads and writes with no shared file
/// position, so concurrent requests never interfere; <see cref="Flush"/> is fsync.
/// </summary>
public sealed class FileStorage : IStorage
{
    private readonly SafeFileHandle _handle;

    private FileStorage(SafeFileHandle handle, string path, bool writable)
    {
        _handle = handle;
        Path = path;
        CanWrite = writable;
    }

    /// <inheritdoc />
    public long Length => RandomAccess.GetLength(_handle);

    /// <inheritdoc />
    public bool CanWrite { get; }

    /// <inheritdoc />
    public string? Path { get; }

    /// <summary>Opens an existing file.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static FileStorage Open(string path, bool writable)
    {
        var fullPath = System.IO.Path.GetFullPath(path);
        var handle = File.OpenHandle(
            fullPath,
            FileMode.Open,
            writable ? FileAccess.ReadWrite : FileAccess.Read,
            writable ? FileShare.Read : FileShare.ReadWrite,
            FileOptions.RandomAccess | FileOptions.Asynchronous);
        return new FileStorage(handle, fullPath, writable);
    }

    /// <summary>Creates (or truncates) a file for writing.</summary>
    public static FileStorage Create(string path, bool overwrite = true)
    {
        var fullPath = System.IO.Path.GetFullPath(path);
        var handle = File.OpenHandle(
            fullPath,
            overwrite ? FileMode.Create : FileMode.CreateNew,
            FileAccess.ReadWrite,
            FileShare.Read,
            FileOptions.RandomAccess | FileOptions.Asynchronous);
        return new FileStorage(handle, fullPath, writable: true);
    }

    /// <inheritdoc />
    public int Read(long offset, Span<byte> buffer)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var read = RandomAccess.Read(_handle, buffer[total..], offset + total);
            if (read == 0)
            {
                break;
            }

            total += read;
        }

        return total;
    }

    /// <inheritdoc />
    public async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var read = await RandomAccess.ReadAsync(_handle, buffer[total..], offset + total, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                break;
            }

            total += read;
        }

        return total;
    }

    /// <inheritdoc />
    public void Write(long offset, ReadOnlySpan<byte> buffer) => RandomAccess.Write(_handle, buffer, offset);

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken) =>
        RandomAccess.WriteAsync(_handle, buffer, offset, cancellationToken);

    /// <inheritdoc />
    public void SetLength(long length) => RandomAccess.SetLength(_handle, length);

    /// <inheritdoc />
    public void Flush() => RandomAccess.FlushToDisk(_handle);

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        RandomAccess.FlushToDisk(_handle);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public void Reserve(long offset, long length)
    {
        if (!SparseFile.TryAllocate(_handle, offset, length) && offset + length > Length)
        {
            SetLength(offset + length);
        }
    }

    /// <inheritdoc />
    public bool TryGetDataExtent(long offset, out bool isData, out long extentEnd) =>
        SparseFile.TryGetDataExtent(_handle, offset, Length, out isData, out extentEnd);

    /// <inheritdoc />
    public void Dispose() => _handle.Dispose();
}
