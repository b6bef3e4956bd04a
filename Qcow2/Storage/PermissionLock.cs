using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;

namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// QEMU's image locking (block/file-posix.c): an opener read-locks byte 100 + i for every
/// permission i it holds and byte 200 + i for every permission i it does not share, with Linux
/// open-file-description locks, then tests whether anyone else read-locks a byte that conflicts.
/// OFD locks belong to one open file description, so two opens in one process exclude each other
/// as two processes do, and the locks vanish when the descriptor closes, even after a crash.
/// Openers that share one descriptor (two images over one <see cref="FileStream"/>) share its
/// locks too, so they are checked against each other here and the descriptor publishes the union
/// of what they hold: the kernel cannot tell them apart.
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

    /// <summary>The openers publishing locks through each descriptor, by handle.</summary>
    private static readonly ConditionalWeakTable<SafeFileHandle, List<PermissionLock>> Sharers = new();

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

        var sharers = Sharers.GetValue(_handle, _ => []);
        lock (sharers)
        {
            // Others on this descriptor hold the same lock bytes: the kernel shows them to nobody here.
            if (FindConflictAmong(sharers, request) is { } sibling)
            {
                throw sibling;
            }

            var others = UnionOf(sharers);
            var previous = Current;
            Publish(Union(Union(previous, request), others));
            if (FindConflict(request) is { } conflict)
            {
                Publish(Union(previous, others));
                throw conflict;
            }

            Publish(Union(request, others));
            Current = request;
            if (!sharers.Contains(this))
            {
                sharers.Add(this);
            }
        }
    }

    /// <summary>Drops every lock byte (for a descriptor that stays open after the image closes).</summary>
    public void Release()
    {
        if (_enabled && Sharers.TryGetValue(_handle, out var sharers))
        {
            lock (sharers)
            {
                sharers.Remove(this);
                if (!_handle.IsClosed && Current != FileLockRequest.None)
                {
                    Publish(UnionOf(sharers)); // what the other openers on this descriptor still hold stays locked
                }
            }
        }

        Current = FileLockRequest.None;
    }

    private static FileLockRequest Union(FileLockRequest first, FileLockRequest second) =>
        new(first.Held | second.Held, first.Unshared | second.Unshared);

    private FileLockRequest UnionOf(List<PermissionLock> sharers) =>
        sharers.Where(s => !ReferenceEquals(s, this)).Aggregate(FileLockRequest.None, (union, s) => Union(union, s.Current));

    /// <summary>The rule of <see cref="FindConflict"/>, applied to the other openers of this descriptor.</summary>
    private ImageLockedException? FindConflictAmong(List<PermissionLock> sharers, FileLockRequest request)
    {
        var others = UnionOf(sharers);
        foreach (var (permission, name) in Names)
        {
            if ((request.Held & others.Unshared & permission) != 0)
            {
                return new ImageLockedException(_path, name, shared: false);
            }

            if ((request.Unshared & others.Held & permission) != 0)
            {
                return new ImageLockedException(_path, name, shared: true);
            }
        }

        return null;
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
