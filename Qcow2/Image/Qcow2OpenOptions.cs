using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>How backing files are treated when an image is opened.</summary>
public enum BackingFileMode
{
    /// <summary>Open the whole backing chain; unallocated clusters read through it.</summary>
    Open,

    /// <summary>Do not open backing files; unallocated clusters read as zeros (like qemu-img's -U with no backing).</summary>
    Ignore,
}

/// <summary>Options for <see cref="Qcow2Image.Open(string, Qcow2OpenOptions?)"/>. The defaults suit almost everyone.</summary>
public sealed record Qcow2OpenOptions
{
    /// <summary>Default L2 cache limit, as QEMU's on Linux (32 MiB).</summary>
    public const long DefaultL2CacheBytes = 32L << 20;

    /// <summary>Default refcount cache size.</summary>
    public const long DefaultRefcountCacheBytes = 1L << 20;

    /// <summary>Open for writing. Off by default.</summary>
    public bool Writable { get; init; }

    /// <summary>Whether to open backing files.</summary>
    public BackingFileMode BackingFiles { get; init; } = BackingFileMode.Open;

    /// <summary>
    /// Read while others write (qemu-img -U, force-share): take no lock that stops a writer and
    /// ignore writers' locks. Only for read-only opens; what is read may change underneath, so
    /// use it to look, not to copy.
    /// </summary>
    public bool ForceShare { get; init; }

    /// <summary>
    /// Whether the image, its backing files and its data file are locked as QEMU locks them
    /// (default), so that QEMU and this library refuse to write an image the other is using.
    /// </summary>
    public FileLocking Locking { get; init; }

    /// <summary>Which backing and data files the image may open (default: any regular file, as QEMU).</summary>
    public BackingFilePolicy BackingPolicy { get; init; } = BackingFilePolicy.AnyRegularFile;

    /// <summary>Opens backing files and external data files by name.</summary>
    public IBackingFileResolver BackingResolver { get; init; } = DefaultBackingFileResolver.Instance;

    /// <summary>Path of the external data file, overriding the name stored in the image.</summary>
    public string? DataFilePath { get; init; }

    /// <summary>
    /// Most memory the L2 cache may use. The cache never grows beyond what covers the whole disk,
    /// and always holds at least two tables.
    /// </summary>
    public long L2CacheBytes { get; init; } = DefaultL2CacheBytes;

    /// <summary>Most memory the refcount block cache may use (at least four blocks are kept).</summary>
    public long RefcountCacheBytes { get; init; } = DefaultRefcountCacheBytes;

    /// <summary>
    /// Decides where written data clusters go (the allocator seam). Null means fresh clusters; a
    /// deduplicating allocator shares clusters holding the same bytes. One instance per image.
    /// </summary>
    public IClusterAllocator? Allocator { get; init; }

    /// <summary>
    /// Optional features that keep data in the image (e.g. a deduplication index). Their
    /// auto-clear bits survive a read-write open; every other unknown auto-clear bit is cleared.
    /// </summary>
    public IReadOnlyList<IImageExtension> Extensions { get; init; } = [];

    /// <summary>
    /// Gives data clusters this session frees (discard, rewrites that share or move a cluster) back
    /// to the file system, as QEMU does with <c>discard=unmap</c>: once the flush that makes their
    /// freeing durable is done, their ranges are punched as holes where the file system supports it.
    /// Only clusters freed by an entry that owned them alone (COPIED) are punched, so a damaged
    /// image whose refcounts undercount never loses data to it. Default true; false keeps the file's blocks.
    /// </summary>
    public bool ReturnFreedSpace { get; init; } = true;

    /// <summary>For images opened from a stream: leave the stream open when the image is disposed.</summary>
    public bool LeaveOpen { get; init; }

    /// <summary>
    /// Open to repair with <see cref="Qcow2Image.Check(Check.CheckRepair)"/>, as qemu-img check -r
    /// does: with <see cref="Writable"/>, an image with the corrupt bit opens for writing, and a
    /// dirty image is not repaired at open (so the check reports and counts what it repairs), and
    /// persistent bitmaps are not marked in use. The dirty bit stays set until a repair leaves the
    /// image clean. Write nothing but repairs through such an image. L1 and refcount tables reaching
    /// past the end of the file read as zeros, as in QEMU, so a truncated image is checked (and
    /// repaired) instead of refused.
    /// </summary>
    public bool ForRepair { get; init; }

    /// <summary>The permissions the image file itself is locked with.</summary>
    internal FileLockRequest ImageLock => ForceShare ? FileLockRequest.ForceShared : FileLockRequest.Image(Writable);

    /// <summary>How the image file itself is opened.</summary>
    internal FileStorageOptions ImageFileOptions => new() { Writable = Writable, Lock = ImageLock, Locking = Locking };

    /// <summary>Refuses contradictory options.</summary>
    internal void Validate()
    {
        if (ForceShare && Writable)
        {
            throw new ArgumentException("force-share=on can only be used with read-only images", nameof(ForceShare));
        }
    }
}
