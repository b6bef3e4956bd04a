using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// An L1 table held in memory (the active one, or a snapshot's). QEMU keeps L1 tables resident
/// too; they are at most 32 MiB.
/// </summary>
internal sealed class L1Table
{
    private const int MaxLoggedChanges = 1024;
    private readonly SortedSet<long> _dirty = [];
    private List<(ulong Old, ulong New)>? _changes = [];
    private ulong[] _entries;

    public L1Table(long offset, ulong[] entries)
    {
        Offset = offset;
        _entries = entries;
    }

    /// <summary>Host offset of the table.</summary>
    public long Offset { get; private set; }

    public int Size => _entries.Length;

    public L1Entry this[long index] => index < _entries.Length ? new L1Entry(_entries[index]) : default;

    /// <summary>Reads <paramref name="size"/> entries at <paramref name="offset"/>.</summary>
    /// <remarks>With <paramref name="zerosPastEnd"/> entries past the end of the file read as zeros (as QEMU reads them) instead of the table being refused.</remarks>
    public static async ValueTask<L1Table> ReadAsync(IStorage storage, long offset, int size, string structure, bool async, CancellationToken cancellationToken, bool zerosPastEnd = false)
    {
        var bytes = (long)size * Qcow2Layout.L1EntrySize;
        if (bytes > Qcow2Layout.MaxL1TableBytes)
        {
            throw Qcow2Corruption.Create(structure, $"{size} entries exceed QEMU's {Qcow2Layout.MaxL1TableBytes >> 20} MiB limit", offset);
        }

        var buffer = new byte[bytes];
        if (zerosPastEnd)
        {
            await storage.ReadAsync(offset, buffer, async, cancellationToken).ConfigureAwait(false); // the rest stays zero
        }
        else if (size > 0 && offset + bytes > storage.Length)
        {
            throw Qcow2Corruption.Create(structure, $"{size} entries ({bytes} bytes) extend past the end of the file ({storage.Length} bytes)", offset);
        }
        else
        {
            await storage.ReadStructureAsync(offset, buffer, structure, async, cancellationToken).ConfigureAwait(false);
        }

        var entries = new ulong[size];
        for (var i = 0; i < size; i++)
        {
            entries[i] = BinaryPrimitives.ReadUInt64BigEndian(buffer.AsSpan(i * 8));
        }

        return new L1Table(offset, entries);
    }

    /// <summary>
    /// Bumped by every change of an entry or of the table's place, so that the overlap index
    /// (<see cref="MetadataOverlapTracker"/>) sees when to rebuild. Changed under the metadata lock.
    /// </summary>
    public int Version { get; private set; }

    /// <summary>The entries as they are now (read under the metadata lock).</summary>
    public ReadOnlySpan<ulong> Entries => _entries;

    private void Store(long index, ulong raw)
    {
        if (_changes is { } changes)
        {
            if (changes.Count < MaxLoggedChanges)
            {
                changes.Add((_entries[index], raw));
            }
            else
            {
                _changes = null; // many changes at once (a snapshot, a resize): the reader rebuilds
            }
        }

        _entries[index] = raw;
        Version++;
    }

    /// <summary>
    /// The entry changes (old, new) since the last call, so that the overlap index can follow them
    /// without rescanning the table; null when it must rescan (too many changes, or the table was
    /// replaced). Caller holds the metadata lock.
    /// </summary>
    public (ulong Old, ulong New)[]? TakeChanges()
    {
        var changes = _changes?.ToArray();
        _changes = [];
        return changes;
    }

    /// <summary>A copy of the entries (for snapshots and resizes).</summary>
    public ulong[] ToArray() => (ulong[])_entries.Clone();

    /// <summary>Encodes the table as stored on disk.</summary>
    public byte[] Encode(int? sizeOverride = null)
    {
        var buffer = new byte[(sizeOverride ?? _entries.Length) * Qcow2Layout.L1EntrySize];
        for (var i = 0; i < Math.Min(_entries.Length, buffer.Length / 8); i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(i * 8), _entries[i]);
        }

        return buffer;
    }

    /// <summary>Whether entries changed in memory have not been written yet.</summary>
    public bool HasDirtyEntries => _dirty.Count > 0;

    /// <summary>Changes one entry in memory and writes it to disk now.</summary>
    public async ValueTask SetAsync(IStorage storage, long index, L1Entry entry, bool async, CancellationToken cancellationToken)
    {
        var previous = this[index].Raw;
        _dirty.Remove(index);
        Store(index, entry.Raw);
        var bytes = new byte[Qcow2Layout.L1EntrySize];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, entry.Raw);
        try
        {
            await storage.WriteAsync(Offset + (index * Qcow2Layout.L1EntrySize), bytes, async, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            // The entry on disk may be either: memory goes back to the old one (or later changes
            // under the new entry would be lost behind the old one at the next open), and the next
            // flush writes it again so that disk and memory agree.
            Store(index, previous);
            _dirty.Add(index);
            throw;
        }
    }

    /// <summary>
    /// Changes one entry in memory; it is written by <see cref="WriteDirtyAsync"/>, which the flush
    /// calls only after the L2 tables (and their refcounts) are on disk.
    /// </summary>
    public void SetDeferred(long index, L1Entry entry)
    {
        Store(index, entry.Raw);
        _dirty.Add(index);
    }

    /// <summary>Writes every deferred entry, grouping neighbours into one write.</summary>
    public async ValueTask WriteDirtyAsync(IStorage storage, bool async, CancellationToken cancellationToken)
    {
        while (_dirty.Count > 0)
        {
            var first = _dirty.Min;
            var last = first;
            while (_dirty.Contains(last + 1))
            {
                last++;
            }

            var bytes = new byte[(last - first + 1) * Qcow2Layout.L1EntrySize];
            for (var i = first; i <= last; i++)
            {
                BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan((int)(i - first) * 8), _entries[i]);
            }

            await storage.WriteAsync(Offset + (first * Qcow2Layout.L1EntrySize), bytes, async, cancellationToken).ConfigureAwait(false);
            for (var i = first; i <= last; i++)
            {
                _dirty.Remove(i); // only once written: a failed write is retried by the next flush
            }
        }
    }

    /// <summary>Changes one entry in memory only (the caller writes the whole table).</summary>
    public void SetInMemory(long index, L1Entry entry) => Store(index, entry.Raw);

    /// <summary>Index of the last entry pointing at an L2 table, or −1.</summary>
    public long LastAllocatedIndex()
    {
        for (var i = _entries.Length - 1; i >= 0; i--)
        {
            if (new L1Entry(_entries[i]).IsAllocated)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Points this object at a new table (after an L1 move on resize).</summary>
    public void Replace(long offset, ulong[] entries)
    {
        Offset = offset;
        _entries = entries;
        _dirty.Clear();
        _changes = null;
        Version++;
    }
}
