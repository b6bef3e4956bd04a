namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// The permissions an opener holds on a file and those it does not let others hold at the same
/// time. Two openers conflict when one holds what the other does not share. The presets are the
/// ones QEMU's qemu-img and qemu-io take (measured with qemu-img 7.2: /proc/locks), so QEMU and
/// this library refuse each other exactly as two QEMU processes would.
/// </summary>
/// <param name="Held">Permissions this opener uses.</param>
/// <param name="Unshared">Permissions nobody else may use while this opener holds the file.</param>
public readonly record struct FileLockRequest(BlockPermissions Held, BlockPermissions Unshared)
{
    private const BlockPermissions ImageUnshared = BlockPermissions.Write | BlockPermissions.Resize;

    /// <summary>Holds nothing, forbids nothing: no lock is taken.</summary>
    public static FileLockRequest None => default;

    /// <summary>
    /// A qcow2 image file: a reader reads consistently and lets nobody write or resize underneath
    /// its metadata; a writer also writes and resizes (QEMU's locks bytes 100, 101, 103, 201, 203).
    /// </summary>
    /// <param name="writable">Whether the image is opened for writing.</param>
    public static FileLockRequest Image(bool writable) =>
        new(writable ? BlockPermissions.ConsistentRead | BlockPermissions.Write | BlockPermissions.Resize : BlockPermissions.ConsistentRead, ImageUnshared);

    /// <summary>
    /// A read-only opener that shares everything (qemu-img -U, force-share): it coexists with a
    /// writer and may see data that changes under it.
    /// </summary>
    public static FileLockRequest ForceShared => new(BlockPermissions.ConsistentRead, BlockPermissions.None);

    /// <summary>A raw file used as a disk or as a backing file: nothing is unshared.</summary>
    /// <param name="writable">Whether the file is written.</param>
    public static FileLockRequest RawFile(bool writable) =>
        new(writable ? BlockPermissions.ConsistentRead | BlockPermissions.Write : BlockPermissions.ConsistentRead, BlockPermissions.None);

    /// <summary>An external data file: its length must not change under the image, its content may be shared.</summary>
    /// <param name="writable">Whether the image writes guest data into it.</param>
    public static FileLockRequest DataFile(bool writable) =>
        new(writable ? BlockPermissions.ConsistentRead | BlockPermissions.Write | BlockPermissions.Resize : BlockPermissions.ConsistentRead, BlockPermissions.Resize);

    /// <summary>A file being created (and truncated): QEMU's image creation takes write and resize first.</summary>
    public static FileLockRequest Creating => new(BlockPermissions.Write | BlockPermissions.Resize, BlockPermissions.Resize);

    /// <summary>This request with nothing unshared, as force-share makes it.</summary>
    public FileLockRequest Shared() => this with { Unshared = BlockPermissions.None };
}
