using System.Buffers.Binary;
using System.Text;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The persistent dirty bitmaps of an image open for writing, kept the way QEMU keeps them
/// (block/qcow2-bitmap.c): at open every consistent bitmap is loaded and marked in use on disk;
/// enabled ones record every guest write, zero write and discard; at close each changed bitmap is
/// written to fresh clusters, a new directory is switched in with one header write, and the old
/// clusters are freed. A bitmap already in use at open was not saved properly: it stays as it is
/// (inconsistent), and may only be removed. Thread-safe: guest writes mark bits from many threads.
/// </summary>
internal sealed class PersistentBitmaps
{
    /// <summary>
    /// Most bytes of bitmap data loaded at open. QEMU caps each bitmap at 512 MiB but not their
    /// number; a hostile directory of many bitmaps sharing one huge table must not exhaust memory.
    /// </summary>
    public const long LoadLimitBytes = 1L << 30;

    private readonly Lock _sync = new();
    private readonly List<Slot> _slots;
    private readonly List<Slot> _removed = [];
    private readonly int _clusterBits;
    private bool _directoryChanged;

    private PersistentBitmaps(List<Slot> slots, int clusterBits)
    {
        _slots = slots;
        _clusterBits = clusterBits;
    }

    /// <summary>Whether any bitmap records writes (the write path skips the lock otherwise).</summary>
    public bool AnyEnabled { get; private set; }

    /// <summary>
    /// Loads every consistent bitmap of the directory, as a read-write open must before marking
    /// them in use. A bitmap QEMU would refuse to load fails the open, as it fails QEMU's.
    /// </summary>
    public static async ValueTask<PersistentBitmaps> LoadAsync(ImageMetadata metadata, bool async, CancellationToken cancellationToken)
    {
        var slots = new List<Slot>(metadata.Bitmaps.Count);
        var budget = LoadLimitBytes;
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in metadata.Bitmaps)
        {
            if (!names.Add(entry.Name))
            {
                // QEMU cannot load two bitmaps of one name either, and fails the open.
                throw Qcow2Corruption.Create("bitmap directory", $"two bitmaps are named '{entry.Name}'", entry.TableOffset);
            }

            if ((entry.Flags & BitmapFlags.InUse) != 0)
            {
                slots.Add(new Slot(entry, null, null));
                continue;
            }

            var (bitmap, dataClusters) = await LoadBitmapAsync(metadata, entry, budget, async, cancellationToken).ConfigureAwait(false);
            budget -= (long)dataClusters.Count << metadata.Geometry.ClusterBits;
            slots.Add(new Slot(entry, bitmap, dataClusters));
        }

        var bitmaps = new PersistentBitmaps(slots, metadata.Geometry.ClusterBits);
        bitmaps.UpdateAnyEnabled();
        return bitmaps;
    }

    /// <summary>
    /// Reads one bitmap's table and data (QEMU's load_bitmap), refusing what QEMU refuses.
    /// Returns the bitmap and the data clusters it occupies.
    /// </summary>
    public static async ValueTask<(DirtyBitmap Bitmap, List<long> DataClusters)> LoadBitmapAsync(ImageMetadata metadata, BitmapDirectoryEntry entry, long budget, bool async, CancellationToken cancellationToken)
    {
        var geometry = metadata.Geometry;
        var size = metadata.Header.Header.Size;
        if (entry.Problem(geometry.ClusterSize, size) is { } problem)
        {
            throw Qcow2Corruption.Create("bitmap directory", $"bitmap '{entry.Name}' cannot be loaded: {problem}", entry.TableOffset);
        }

        var bitmap = new DirtyBitmap(entry.Name, entry.GranularityBits, geometry.ClusterBits, size, (entry.Flags & BitmapFlags.Auto) != 0);
        var table = new byte[(long)entry.TableSize * 8];
        await metadata.File.ReadStructureAsync(entry.TableOffset, table, $"bitmap table of '{entry.Name}'", async, cancellationToken).ConfigureAwait(false);
        var dataClusters = new List<long>();
        var cluster = new byte[geometry.ClusterSize];
        for (var i = 0; i < entry.TableSize; i++)
        {
            var tableEntry = new BitmapTableEntry(BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8)));
            if (!tableEntry.IsValid(geometry.ClusterSize))
            {
                throw Qcow2Corruption.Create("bitmap table", $"entry {i} of bitmap '{entry.Name}' is invalid (0x{tableEntry.Raw:x16})", entry.TableOffset + (i * 8L));
            }

            if (tableEntry.AllOnes)
            {
                bitmap.SetChunkAllOnes(i);
            }
            else if (tableEntry.Offset != 0)
            {
                budget -= geometry.ClusterSize;
                if (budget < 0)
                {
                    throw new InvalidDataException($"The image's persistent bitmaps hold more than {LoadLimitBytes >> 20} MiB of data; they are not loaded into memory.");
                }

                await metadata.File.ReadStructureAsync(tableEntry.Offset, cluster, $"data of bitmap '{entry.Name}'", async, cancellationToken).ConfigureAwait(false);
                bitmap.ReadChunk(i, cluster);
                dataClusters.Add(tableEntry.Offset);
            }
        }

        bitmap.Modified = false;
        return (bitmap, dataClusters);
    }

    /// <summary>The bitmaps as this session sees them, in directory order.</summary>
    public IReadOnlyList<PersistentBitmap> List()
    {
        lock (_sync)
        {
            return [.. _slots.Select(s => s.Bitmap is { } b
                ? new PersistentBitmap(b.Name, b.Granularity, b.Enabled, Consistent: true)
                : new PersistentBitmap(s.OnDisk!.Name, s.OnDisk.Granularity, (s.OnDisk.Flags & BitmapFlags.Auto) != 0, Consistent: false))];
        }
    }

    /// <summary>Records a guest change of [offset, offset + length) in every enabled bitmap.</summary>
    public void MarkDirty(long offset, long length)
    {
        if (!AnyEnabled)
        {
            return;
        }

        lock (_sync)
        {
            foreach (var slot in _slots)
            {
                if (slot.Bitmap is { Enabled: true } bitmap)
                {
                    bitmap.Mark(offset, length);
                }
            }
        }
    }

    /// <summary>Follows a resize of the disk.</summary>
    public void Resize(long diskSize)
    {
        lock (_sync)
        {
            foreach (var slot in _slots)
            {
                slot.Bitmap?.Resize(diskSize);
            }
        }
    }

    /// <summary>
    /// QEMU refuses to resize an image holding an inconsistent bitmap (it could not resize it).
    /// </summary>
    public void ThrowIfAnyInconsistent()
    {
        lock (_sync)
        {
            if (_slots.FirstOrDefault(s => s.Bitmap is null) is { } slot)
            {
                throw Inconsistent(slot.OnDisk!.Name);
            }
        }
    }

    /// <summary>Adds a bitmap (QEMU's block-dirty-bitmap-add, persistent); stored at close.</summary>
    public void Add(string name, long granularity, bool enabled, ImageMetadata metadata)
    {
        var header = metadata.Header.Header;
        var clusterSize = metadata.Geometry.ClusterSize;
        lock (_sync)
        {
            if (name.Length == 0)
            {
                throw new BitmapException("Bitmap name cannot be empty");
            }

            if (granularity < 512 || granularity > uint.MaxValue || (granularity & (granularity - 1)) != 0)
            {
                throw new BitmapException("Granularity must be power of 2 and at least 512");
            }

            if (Find(name) is not null)
            {
                throw new BitmapException($"Bitmap already exists: {name}");
            }

            var granularityBits = System.Numerics.BitOperations.Log2((ulong)granularity);
            var dataBytes = BitmapLimits.DataBytes(header.Size, granularityBits);
            var problem = header.Version < 3 ? "Cannot store dirty bitmaps in qcow2 v2 files"
                : _slots.Count >= BitmapsExtension.MaxBitmaps ? "Maximum number of persistent bitmaps is already reached"
                : granularityBits > BitmapLimits.MaxGranularityBits ? $"Granularity exceeds maximum ({1L << BitmapLimits.MaxGranularityBits} bytes)"
                : dataBytes > BitmapDirectoryEntry.MaxPhysicalSize || dataBytes > (long)BitmapDirectoryEntry.MaxTableSize * clusterSize ? "Too much space will be occupied by the bitmap. Use larger granularity"
                : Encoding.UTF8.GetByteCount(name) > BitmapLimits.MaxNameBytes ? $"Name length exceeds maximum ({BitmapLimits.MaxNameBytes} characters)"
                : DirectoryBytes() + ((BitmapDirectoryEntry.FixedSize + Encoding.UTF8.GetByteCount(name) + 7) & ~7) > BitmapsExtension.MaxDirectorySize ? "Not enough space in the bitmap directory"
                : null;
            if (problem is not null)
            {
                throw new BitmapException($"Can't make bitmap '{name}' persistent in '{metadata.File.Path ?? "image"}': {problem}");
            }

            _slots.Add(new Slot(null, new DirtyBitmap(name, granularityBits, _clusterBits, header.Size, enabled) { Modified = true }, null));
            _directoryChanged = true;
            UpdateAnyEnabled();
        }
    }

    /// <summary>Removes a bitmap (consistent or not); its clusters are freed at close.</summary>
    public void Remove(string name)
    {
        lock (_sync)
        {
            var slot = Find(name) ?? throw NotFound(name);
            _slots.Remove(slot);
            _removed.Add(slot);
            _directoryChanged = true;
            UpdateAnyEnabled();
        }
    }

    /// <summary>Clears every bit of a bitmap.</summary>
    public void Clear(string name)
    {
        lock (_sync)
        {
            Usable(name).Clear();
        }
    }

    /// <summary>Starts or stops recording writes in a bitmap.</summary>
    public void SetEnabled(string name, bool enabled)
    {
        lock (_sync)
        {
            var bitmap = Usable(name);
            _directoryChanged |= bitmap.Enabled != enabled;
            bitmap.Enabled = enabled;
            UpdateAnyEnabled();
        }
    }

    /// <summary>Sets in bitmap <paramref name="target"/> every bit of <paramref name="source"/> (of this image or another of the same size).</summary>
    public void Merge(string target, DirtyBitmap source)
    {
        lock (_sync)
        {
            var bitmap = Usable(target);
            if (bitmap.DiskSize != source.DiskSize)
            {
                throw new BitmapException($"Bitmaps are of different sizes (destination size is {bitmap.DiskSize}, source size is {source.DiskSize}) and can't be merged");
            }

            bitmap.Merge(source);
        }
    }

    /// <summary>Refuses a bitmap that is missing or inconsistent.</summary>
    public void ThrowIfNotUsable(string name)
    {
        lock (_sync)
        {
            _ = Usable(name);
        }
    }

    /// <summary>A copy of a consistent bitmap of this session (a merge source, or to read its ranges).</summary>
    public DirtyBitmap Snapshot(string name)
    {
        lock (_sync)
        {
            var bitmap = Usable(name);
            var copy = new DirtyBitmap(bitmap.Name, bitmap.GranularityBits, _clusterBits, bitmap.DiskSize, bitmap.Enabled);
            copy.Merge(bitmap);
            return copy;
        }
    }

    /// <summary>
    /// Writes the bitmaps back at the end of the session and clears their in-use flags; caller
    /// holds the metadata lock, guest writes are over, and everything they wrote is flushed. When
    /// nothing changed, only the in-use flags are cleared in place; otherwise changed bitmaps go to
    /// fresh clusters, the new directory is switched in by one header write after a flush, and only
    /// then are the old clusters freed — a crash at any point leaves the old directory (its
    /// bitmaps in use, so inconsistent, never wrong) or the new one, and at most leaked clusters.
    /// </summary>
    public async ValueTask StoreAsync(ImageMetadata metadata, WritableMetadata writable, bool async, CancellationToken cancellationToken)
    {
        List<Slot> slots;
        List<Slot> removed;
        lock (_sync)
        {
            var size = metadata.Header.Header.Size;
            foreach (var slot in _slots)
            {
                if (slot.Bitmap is { } bitmap && bitmap.DiskSize != size)
                {
                    bitmap.Resize(size); // a snapshot of another size was applied
                }
            }

            slots = [.. _slots];
            removed = [.. _removed];
        }

        if (!_directoryChanged && slots.All(s => s.Bitmap is not { Modified: true }))
        {
            // Nothing changed: each loaded bitmap's in-use flag is cleared where it stands.
            var loaded = slots.Where(s => s.Bitmap is not null).ToDictionary(s => s.OnDisk!.Name, s => s.Bitmap!, StringComparer.Ordinal);
            await writable.WriteBitmapFlagsInPlaceAsync(
                entry => loaded.TryGetValue(entry.Name, out var bitmap) ? (bitmap.Enabled ? BitmapFlags.Auto : BitmapFlags.None) : entry.Flags, async, cancellationToken).ConfigureAwait(false);
            return;
        }

        var geometry = metadata.Geometry;
        var entries = new List<BitmapDirectoryEntry>(slots.Count);
        var freeAfter = new List<(long Offset, long Bytes)>();
        foreach (var slot in slots)
        {
            if (slot.Bitmap is not { } bitmap)
            {
                entries.Add(slot.OnDisk!); // inconsistent: kept as it is, in use
                continue;
            }

            var flags = bitmap.Enabled ? BitmapFlags.Auto : BitmapFlags.None;
            if (!bitmap.Modified && slot.OnDisk is { } kept)
            {
                entries.Add(kept with { Flags = flags });
                continue;
            }

            var (tableOffset, tableSize) = await WriteBitmapAsync(writable, bitmap, geometry.ClusterSize, async, cancellationToken).ConfigureAwait(false);
            entries.Add(new BitmapDirectoryEntry { TableOffset = tableOffset, TableSize = tableSize, Flags = flags, GranularityBits = bitmap.GranularityBits, Name = bitmap.Name });
            if (slot.OnDisk is { } old)
            {
                freeAfter.AddRange(ClustersOf(old, slot.DataClusters!, geometry.ClusterSize));
            }
        }

        foreach (var slot in removed.Where(s => s.OnDisk is not null))
        {
            var dataClusters = slot.DataClusters ?? await ReadDataClustersAsync(metadata, slot.OnDisk!, async, cancellationToken).ConfigureAwait(false);
            freeAfter.AddRange(ClustersOf(slot.OnDisk!, dataClusters, geometry.ClusterSize));
        }

        var directory = BitmapDirectoryEntry.SerializeDirectory(entries);
        var directoryOffset = await writable.WriteNewStructureAsync(directory, async, cancellationToken).ConfigureAwait(false);
        await writable.FlushAsync(async, cancellationToken).ConfigureAwait(false);

        var header = metadata.Header;
        var oldExtension = header.Bitmaps;
        var autoclear = entries.Count > 0 ? header.Header.Autoclear | AutoclearFeatures.Bitmaps : header.Header.Autoclear & ~AutoclearFeatures.Bitmaps;
        await metadata.RewriteHeaderAsync(header with
        {
            Header = header.Header with { Autoclear = autoclear },
            Bitmaps = entries.Count > 0 ? new BitmapsExtension(entries.Count, directory.Length, directoryOffset) : null,
        }, async, cancellationToken).ConfigureAwait(false);
        metadata.Bitmaps = entries;

        if (oldExtension is not null && (header.Header.Autoclear & AutoclearFeatures.Bitmaps) != 0)
        {
            freeAfter.Add((oldExtension.DirectoryOffset, oldExtension.DirectorySize));
        }

        foreach (var (offset, bytes) in freeAfter)
        {
            await writable.FreeMetadataAsync(offset, bytes, async, cancellationToken).ConfigureAwait(false);
        }

        lock (_sync)
        {
            _removed.Clear();
            _directoryChanged = false;
            for (var i = 0; i < _slots.Count; i++)
            {
                if (_slots[i].Bitmap is { } bitmap)
                {
                    bitmap.Modified = false;
                    _slots[i] = new Slot(entries[i], bitmap, null); // stored: the session is over
                }
            }
        }
    }

    /// <summary>Writes the bitmap's data clusters (only those with bits set, as QEMU does) and its table.</summary>
    private static async ValueTask<(long Offset, int Size)> WriteBitmapAsync(WritableMetadata writable, DirtyBitmap bitmap, int clusterSize, bool async, CancellationToken cancellationToken)
    {
        var table = new byte[(long)bitmap.ChunkCount * 8];
        var cluster = new byte[clusterSize];
        for (var i = 0; i < bitmap.ChunkCount; i++)
        {
            if (!bitmap.ChunkHasBits(i))
            {
                continue;
            }

            bitmap.WriteChunk(i, cluster);
            var offset = await writable.WriteNewStructureAsync(cluster, async, cancellationToken).ConfigureAwait(false);
            BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(i * 8), BitmapTableEntry.At(offset).Raw);
        }

        var tableOffset = await writable.WriteNewStructureAsync(table, async, cancellationToken).ConfigureAwait(false);
        return (tableOffset, bitmap.ChunkCount);
    }

    /// <summary>The data clusters an inconsistent bitmap's table names (its valid entries only).</summary>
    private static async ValueTask<List<long>> ReadDataClustersAsync(ImageMetadata metadata, BitmapDirectoryEntry entry, bool async, CancellationToken cancellationToken)
    {
        var clusterSize = metadata.Geometry.ClusterSize;
        if (entry.TableOffset == 0 || entry.TableOffset % clusterSize != 0 || (long)entry.TableSize * clusterSize > BitmapDirectoryEntry.MaxPhysicalSize)
        {
            return []; // nothing trustworthy to free: its clusters leak, as in QEMU
        }

        var table = new byte[(long)entry.TableSize * 8];
        await metadata.File.ReadStructureAsync(entry.TableOffset, table, $"bitmap table of '{entry.Name}'", async, cancellationToken).ConfigureAwait(false);
        var clusters = new List<long>();
        for (var i = 0; i < entry.TableSize; i++)
        {
            var tableEntry = new BitmapTableEntry(BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8)));
            if (tableEntry.IsValid(clusterSize) && tableEntry.Offset != 0)
            {
                clusters.Add(tableEntry.Offset);
            }
        }

        return clusters;
    }

    private static IEnumerable<(long Offset, long Bytes)> ClustersOf(BitmapDirectoryEntry entry, List<long> dataClusters, int clusterSize)
    {
        foreach (var cluster in dataClusters)
        {
            yield return (cluster, clusterSize);
        }

        if (entry.TableOffset != 0 && entry.TableOffset % clusterSize == 0)
        {
            yield return (entry.TableOffset, (long)entry.TableSize * 8);
        }
    }

    private static BitmapException NotFound(string name) => new($"Dirty bitmap '{name}' not found");

    private static BitmapException Inconsistent(string name) =>
        new($"Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk");

    private Slot? Find(string name) => _slots.FirstOrDefault(s => (s.Bitmap?.Name ?? s.OnDisk!.Name) == name);

    private DirtyBitmap Usable(string name)
    {
        var slot = Find(name) ?? throw NotFound(name);
        return slot.Bitmap ?? throw Inconsistent(name);
    }

    private long DirectoryBytes() => _slots.Sum(s => (long)((BitmapDirectoryEntry.FixedSize + Encoding.UTF8.GetByteCount(s.Bitmap?.Name ?? s.OnDisk!.Name) + 7) & ~7));

    private void UpdateAnyEnabled() => AnyEnabled = _slots.Any(s => s.Bitmap is { Enabled: true });

    /// <summary>
    /// One bitmap of the directory: as found on disk (null for one added in this session), loaded
    /// (null when inconsistent), and the data clusters its stored copy occupies.
    /// </summary>
    private sealed record Slot(BitmapDirectoryEntry? OnDisk, DirtyBitmap? Bitmap, List<long>? DataClusters);
}

/// <summary>A persistent dirty bitmap of an image.</summary>
/// <param name="Name">Its name.</param>
/// <param name="Granularity">Guest bytes one bit covers.</param>
/// <param name="Enabled">Whether writes are recorded in it (QEMU's "auto" flag).</param>
/// <param name="Consistent">
/// False when the bitmap was in use when the image was opened — a program did not save it
/// properly — so its bits cannot be trusted; it can only be removed.
/// </param>
public sealed record PersistentBitmap(string Name, long Granularity, bool Enabled, bool Consistent);

/// <summary>A bitmap operation was refused; the message is QEMU's for the same case.</summary>
public sealed class BitmapException : InvalidOperationException
{
    /// <inheritdoc />
    public BitmapException(string message)
        : base(message)
    {
    }

    /// <inheritdoc />
    public BitmapException()
    {
    }

    /// <inheritdoc />
    public BitmapException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
