using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// QEMU's image locking (block/file-posix.c): an opener read-locks byte 100 + i for every
/// permission i it holds and byte 200 + i for every permission i it does not share, with Linux
/// open-file-description locks, then tests whether anyone else read-locks a byte that conflicts.
/// OFD locks belong to one open file description, so two opens in one process exclude each other
/// as two processes do, and the locks vanish when the descriptor closes, even after a crash.
/// </summary>
internal sealed class PermissionLock
{
    private const long PermissionBase = 100;
    private const long SharedBase = 200;

    private static readonly (BlockPermissions Permission, string Name)[] Names =
    [
        (BlockPermissions.ConsistentRead, "consistent read"),
        (BlockPermissions.Write, "write"),
        (BlockPermissions.WriteUnchanged, "write unchanged"),
        (BlockPermissions.Resize, "resize"),
    ];

    private readonly SafeFileHandle _handle;
    private readonly string _path;
    private readonly bool _enabled;

    public PermissionLock(SafeFileHandle handle, string path, FileLocking mode)
    {
        _handle = handle;
        _path = path;
        _enabled = mode != FileLocking.Off && OperatingSystem.IsLinux();
    }

    /// <summary>The permissions currently published.</summary>
    public FileLockRequest Current { get; private set; }

    /// <summary>
    /// Publishes <paramref name="request"/> instead of the current permissions, as QEMU changes
    /// them: lock the union of old and new (so nothing is unprotected in between), check for
    /// conflicts, then drop what only the old set needed. On a conflict the old set stays.
    /// </summary>
    /// <exception cref="ImageLockedException">Another opener holds or forbids a permission this request needs.</exception>
    /// <exception cref="IOException">The file system refuses locks.</exception>
    public void Change(FileLockRequest request)
    {
        if (!_enabled)
        {
            Current = request;
            return;
        }

        var previous = Current;
        Publish(new FileLockRequest(previous.Held | request.Held, previous.Unshared | request.Unshared));
        if (FindConflict(request) is { } conflict)
        {
            Publish(previous);
            throw conflict;
        }

        Publish(request);
        Current = request;
    }

    /// <summary>Drops every lock byte (for a descriptor that stays open after the image closes).</summary>
    public void Release()
    {
        if (_enabled && !_handle.IsClosed && Current != FileLockRequest.None)
        {
            Publish(FileLockRequest.None);
        }

        Current = FileLockRequest.None;
    }

    private void Publish(FileLockRequest request) =>
        WithDescriptor(descriptor =>
        {
            foreach (var (permission, _) in Names)
            {
                var index = BitIndex(permission);
                SetByte(descriptor, PermissionBase + index, (request.Held & permission) != 0);
                SetByte(descriptor, SharedBase + index, (request.Unshared & permission) != 0);
            }

            return 0;
        });

    /// <summary>raw_check_lock_bytes: a held permission conflicts with anyone not sharing it, an unshared one with anyone holding it.</summary>
    private ImageLockedException? FindConflict(FileLockRequest request) =>
        WithDescriptor<ImageLockedException?>(descriptor =>
        {
            foreach (var (permission, name) in Names)
            {
                var index = BitIndex(permission);
                if ((request.Held & permission) != 0 && IsLockedByOthers(descriptor, SharedBase + index))
                {
                    return new ImageLockedException(_path, name, shared: false);
                }

                if ((request.Unshared & permission) != 0 && IsLockedByOthers(descriptor, PermissionBase + index))
                {
                    return new ImageLockedException(_path, name, shared: true);
                }
            }

            return null;
        });

    private void SetByte(int descriptor, long offset, bool locked)
    {
        var error = Posix.SetByteLock(descriptor, offset, locked);
        if (error != 0)
        {
            throw new IOException($"Failed to lock byte {offset} of '{_path}': {Posix.Describe(error)} (open with FileLocking.Off, qemu's locking=off, if this file system cannot lock)");
        }
    }

    private bool IsLockedByOthers(int descriptor, long offset)
    {
        var error = Posix.TestByteLocked(descriptor, offset, out var locked);
        if (error != 0)
        {
            throw new IOException($"Failed to get lock byte {offset} of '{_path}': {Posix.Describe(error)}");
        }

        return locked;
    }

    private static int BitIndex(BlockPermissions permission) => System.Numerics.BitOperations.TrailingZeroCount((int)permission);

    private T WithDescriptor<T>(Func<int, T> action)
    {
        var added = false;
        _handle.DangerousAddRef(ref added);
        try
        {
            return action((int)_handle.DangerousGetHandle());
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }
}
