using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

// Persistent dirty bitmaps (incremental backup): listing, reading and QEMU's bitmap operations.
public sealed partial class Qcow2Image
{
    /// <summary>
    /// The persistent dirty bitmaps as this image sees them now: on an image open for writing,
    /// those added or removed in this session count, and every consistent bitmap records the
    /// session's writes (stored at close); read-only, the bitmap directory as stored.
    /// </summary>
    public IReadOnlyList<PersistentBitmap> PersistentBitmaps
    {
        get
        {
            ThrowIfDisposed();
            return _session.Bitmaps?.List() ?? [.. _session.Metadata.Bitmaps.Select(e =>
                new PersistentBitmap(e.Name, e.Granularity, (e.Flags & BitmapFlags.Auto) != 0, (e.Flags & BitmapFlags.InUse) == 0))];
        }
    }

    /// <summary>
    /// The guest ranges a persistent bitmap marks dirty (written since it was added or cleared),
    /// in order, whole granules each, the last cut at the end of the disk.
    /// </summary>
    /// <exception cref="BitmapException">No such bitmap, or it is inconsistent.</exception>
    public IReadOnlyList<GuestRange> GetDirtyRanges(string bitmap)
    {
        ArgumentNullException.ThrowIfNull(bitmap);
        ThrowIfDisposed();
        return [.. ReadBitmap(bitmap).DirtyRanges().Select(r => new GuestRange(r.Offset, r.Length))];
    }

    /// <summary>
    /// Adds a persistent bitmap that records every write from now on (QEMU's
    /// <c>block-dirty-bitmap-add</c> with persistent=on; <c>qemu-img bitmap --add</c>). It is
    /// stored when the image is closed.
    /// </summary>
    /// <param name="name">Its name (1 to 1,023 bytes of UTF-8).</param>
    /// <param name="granularity">Guest bytes per bit, a power of two from 512 B to 2 GiB; null: the cluster size kept between 4 KiB and 64 KiB, as QEMU picks.</param>
    /// <param name="enabled">Whether it records writes (false: added disabled).</param>
    /// <exception cref="BitmapException">The name exists or is invalid, the granularity is invalid, or the image cannot hold it (v2).</exception>
    public void AddBitmap(string name, long? granularity = null, bool enabled = true)
    {
        ArgumentNullException.ThrowIfNull(name);
        WritableBitmaps().Add(name, granularity ?? BitmapLimits.DefaultGranularity(ClusterSize), enabled, _session.Metadata);
    }

    /// <summary>Removes a persistent bitmap, consistent or not (<c>qemu-img bitmap --remove</c>).</summary>
    /// <exception cref="BitmapException">No such bitmap.</exception>
    public void RemoveBitmap(string name) => WritableBitmaps().Remove(name);

    /// <summary>Clears every bit of a persistent bitmap (<c>qemu-img bitmap --clear</c>).</summary>
    /// <exception cref="BitmapException">No such bitmap, or it is inconsistent.</exception>
    public void ClearBitmap(string name) => WritableBitmaps().Clear(name);

    /// <summary>Makes a persistent bitmap record writes (<c>qemu-img bitmap --enable</c>).</summary>
    /// <exception cref="BitmapException">No such bitmap, or it is inconsistent.</exception>
    public void EnableBitmap(string name) => WritableBitmaps().SetEnabled(name, true);

    /// <summary>Stops a persistent bitmap recording writes (<c>qemu-img bitmap --disable</c>).</summary>
    /// <exception cref="BitmapException">No such bitmap, or it is inconsistent.</exception>
    public void DisableBitmap(string name) => WritableBitmaps().SetEnabled(name, false);

    /// <summary>
    /// Sets in bitmap <paramref name="target"/> every bit set in <paramref name="source"/>, of this
    /// image or of <paramref name="sourceImage"/> (same disk size; <c>qemu-img bitmap --merge SOURCE [-b SOURCE_FILE]</c>).
    /// </summary>
    /// <exception cref="BitmapException">A bitmap is missing or inconsistent, or the disk sizes differ.</exception>
    public void MergeBitmap(string target, string source, Qcow2Image? sourceImage = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        var bitmaps = WritableBitmaps();
        bitmaps.ThrowIfNotUsable(target); // QEMU judges the target before it looks for the source
        var from = (sourceImage ?? this).ReadBitmap(source);
        bitmaps.Merge(target, from);
    }

    /// <summary>A copy of a consistent bitmap: from this session when it tracks them, else loaded from the file.</summary>
    internal DirtyBitmap ReadBitmap(string name)
    {
        ThrowIfDisposed();
        if (_session.Bitmaps is { } bitmaps)
        {
            return bitmaps.Snapshot(name);
        }

        var entry = _session.Metadata.Bitmaps.FirstOrDefault(e => e.Name == name) ?? throw new BitmapException($"Dirty bitmap '{name}' not found");
        if ((entry.Flags & BitmapFlags.InUse) != 0)
        {
            throw new BitmapException($"Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk");
        }

        return SyncOver.Run(Image.PersistentBitmaps.LoadBitmapAsync(_session.Metadata, entry, Image.PersistentBitmaps.LoadLimitBytes, async: false, CancellationToken.None)).Bitmap;
    }

    private PersistentBitmaps WritableBitmaps()
    {
        ThrowIfNotWritable();
        return _session.Bitmaps ?? throw new InvalidOperationException("An image opened for repair does not change its bitmaps.");
    }
}

/// <summary>A range of the guest disk.</summary>
/// <param name="Offset">First byte.</param>
/// <param name="Length">Bytes.</param>
public readonly record struct GuestRange(long Offset, long Length);
