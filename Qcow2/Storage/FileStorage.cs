using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// A file opened with <see cref="RandomAccess"/>: positional reads and writes with no shared file
/// position, so concurrent requests never interfere; <see cref="Flush"/> is fsync, skipped when no
/// change completed since the last one (the metadata's ordered flush asks for several in a row). The file is
/// locked as QEMU locks it (see <see cref="FileLockRequest"/>) for as long as it is open.
/// </summary>
public sealed class FileStorage : IStorage
{
    private readonly SafeFileHandle _handle;
    private readonly PermissionLock _lock;
    private bool _punchUnsupported;
    private int _unflushed = 1; // 1 when a change completed since the last fsync (unknown at open)
    private long _diskFlushes;

    private FileStorage(SafeFileHandle handle, string path, bool writable, FileStatus? status, FileLocking locking)
    {
        _handle = handle;
        Path = path;
        CanWrite = writable;
        Identity = status?.Identity;
        _lock = new PermissionLock(handle, path, locking);
    }

    /// <inheritdoc />
    public long Length => RandomAccess.GetLength(_handle);

    /// <inheritdoc />
    public bool CanWrite { get; }

    /// <inheritdoc />
    public string? Path { get; }

    /// <summary>The permissions this open holds and forbids others.</summary>
    public FileLockRequest Permissions => _lock.Current;

    /// <summary>fsync calls made so far (flushes with nothing to make durable are not made).</summary>
    public long DiskFlushes => Interlocked.Read(ref _diskFlushes);

    /// <summary>Device and inode, where the system tells them.</summary>
    internal FileIdentity? Identity { get; }

    /// <summary>
    /// Where the open file really is: on Linux the kernel's name for the descriptor, so a symbolic
    /// link swapped after the open cannot disguise it; elsewhere the path with links resolved.
    /// </summary>
    internal string RealPath
    {
        get
        {
            if (OperatingSystem.IsLinux() && new FileInfo($"/proc/self/fd/{_handle.DangerousGetHandle()}").LinkTarget is { } target)
            {
                return target;
            }

            return (OperatingSystem.IsWindows() ? null : Posix.RealPath(Path!)) ?? Path!;
        }
    }

    /// <summary>Opens an existing regular file with the locks QEMU takes for a raw file.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ImageLockedException">Another opener holds the file in a conflicting way.</exception>
    /// <exception cref="IOException">The path is a directory, FIFO, device or socket, or cannot be opened.</exception>
    public static FileStorage Open(string path, bool writable) => Open(path, new FileStorageOptions { Writable = writable });

    /// <summary>Opens an existing file as <paramref name="options"/> say.</summary>
    /// <inheritdoc cref="Open(string, bool)" path="/exception"/>
    public static FileStorage Open(string path, FileStorageOptions options)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(options);
        return OpenLocked(path, options, FileMode.Open, options.Lock ?? FileLockRequest.RawFile(options.Writable));
    }

    /// <summary>
    /// Creates a file, or empties an existing one, for writing. As QEMU does, the file is opened
    /// without truncating it and locked first, so a file in use by anyone — this process included,
    /// e.g. the source of a conversion — is refused untouched.
    /// </summary>
    /// <param name="path">The file.</param>
    /// <param name="overwrite">Whether an existing file may be emptied.</param>
    /// <inheritdoc cref="Open(string, bool)" path="/exception"/>
    public static FileStorage Create(string path, bool overwrite = true) => Create(path, new FileStorageOptions { Writable = true }, overwrite);

    /// <inheritdoc cref="Create(string, bool)"/>
    /// <param name="path">The file.</param>
    /// <param name="options">Locks and file kinds; <see cref="FileStorageOptions.Writable"/> is implied.</param>
    /// <param name="overwrite">Whether an existing file may be emptied.</param>
    public static FileStorage Create(string path, FileStorageOptions options, bool overwrite = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(options);
        var final = options.Lock ?? FileLockRequest.RawFile(writable: true);
        var creating = new FileLockRequest(final.Held | FileLockRequest.Creating.Held, final.Unshared | FileLockRequest.Creating.Unshared);
        var storage = OpenLocked(path, options with { Writable = true }, overwrite ? FileMode.OpenOrCreate : FileMode.CreateNew, creating);
        try
        {
            storage.SetLength(0);
            storage._lock.Change(final);
            return storage;
        }
        catch
        {
            storage.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Whether two paths name the same file (same device and inode; the same full path where that
    /// cannot be told). Paths are taken as <see cref="Open(string, FileStorageOptions)"/> and
    /// <see cref="Create(string, FileStorageOptions, bool)"/> take them, ".." removed by name: in
    /// "dir/link/../x" that is dir/x, where the kernel would go to the link target's parent.
    /// </summary>
    public static bool IsSameFile(string first, string second)
    {
        ArgumentException.ThrowIfNullOrEmpty(first);
        ArgumentException.ThrowIfNullOrEmpty(second);
        if (Posix.TryStat(FilePaths.Absolute(first), out var a) && Posix.TryStat(FilePaths.Absolute(second), out var b))
        {
            return a.Identity == b.Identity;
        }

        return string.Equals(FilePaths.Absolute(first), FilePaths.Absolute(second), OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal);
    }

    /// <summary>
    /// Changes the permissions this open holds and forbids others, as QEMU does when it reopens a
    /// file: on a conflict nothing changes.
    /// </summary>
    /// <exception cref="ImageLockedException">Another opener conflicts with <paramref name="request"/>.</exception>
    public void Lock(FileLockRequest request) => _lock.Change(request);

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
    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        try
        {
            RandomAccess.Write(_handle, buffer, offset);
        }
        finally
        {
            Changed(); // a failed write may have changed part of the range
        }
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken) =>
        Changed(RandomAccess.WriteAsync(_handle, buffer, offset, cancellationToken));

    /// <inheritdoc />
    public void SetLength(long length)
    {
        RandomAccess.SetLength(_handle, length);
        Changed();
    }

    /// <inheritdoc />
    public void Flush()
    {
        // Cleared before the fsync: a change completing meanwhile marks the file again, so the next
        // flush covers it even if this one started before it landed.
        if (Interlocked.Exchange(ref _unflushed, 0) == 0)
        {
            return;
        }

        try
        {
            Interlocked.Increment(ref _diskFlushes);
            RandomAccess.FlushToDisk(_handle);
        }
        catch
        {
            Changed();
            throw;
        }
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        Flush();
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public void Reserve(long offset, long length)
    {
        if (!SparseFile.TryAllocate(_handle, offset, length) && offset + length > Length)
        {
            SetLength(offset + length);
        }

        Changed();
    }

    /// <inheritdoc />
    public bool TryPunchHole(long offset, long length)
    {
        if (_punchUnsupported || !CanWrite)
        {
            return false;
        }

        // A file system without hole punching says so on every call: ask once.
        _punchUnsupported = !SparseFile.TryPunchHole(_handle, offset, length);
        Changed();
        return !_punchUnsupported;
    }

    /// <inheritdoc />
    public bool TryGetDataExtent(long offset, out bool isData, out long extentEnd) =>
        SparseFile.TryGetDataExtent(_handle, offset, Length, out isData, out extentEnd);

    /// <summary>A change to the file completed: the next flush must reach the disk.</summary>
    private void Changed() => Volatile.Write(ref _unflushed, 1);

    private ValueTask Changed(ValueTask write)
    {
        if (write.IsCompleted)
        {
            Changed(); // a failed write may have changed part of the range
            return write;
        }

        return AwaitChanged(write);

        async ValueTask AwaitChanged(ValueTask pending)
        {
            try
            {
                await pending.ConfigureAwait(false);
            }
            finally
            {
                Changed();
            }
        }
    }

    /// <summary>Closes the file; its locks go with the descriptor.</summary>
    public void Dispose() => _handle.Dispose();

    private static FileStorage OpenLocked(string path, FileStorageOptions options, FileMode mode, FileLockRequest request)
    {
        var fullPath = FilePaths.Absolute(path);
        var (handle, status) = FileOpener.Open(fullPath, options.Writable, mode, request, options.Locking, options.AllowNonRegularFile);
        var storage = new FileStorage(handle, fullPath, options.Writable, status, options.Locking);
        try
        {
            storage._lock.Change(request);
            return storage;
        }
        catch
        {
            storage.Dispose();
            throw;
        }
    }
}
