using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The refcount table held in memory (at most 8 MiB, like QEMU) plus lookups of single refcounts
/// through the refcount block cache. Callers hold the metadata lock.
/// </summary>
internal sealed class RefcountTable
{
    private readonly Geometry _geometry;
    private readonly TableCache _blocks;
    private ulong[] _entries;

    public RefcountTable(Geometry geometry, TableCache blocks, long offset, int clusters, ulong[] entries)
    {
        _geometry = geometry;
        _blocks = blocks;
        Offset = offset;
        Clusters = clusters;
        _entries = entries;
    }

    /// <summary>Host offset of the table.</summary>
    public long Offset { get; private set; }

    /// <summary>Size of the table in clusters.</summary>
    public int Clusters { get; private set; }

    /// <summary>Number of entries (refcount blocks the table can point at).</summary>
    public int Size => _entries.Length;

    /// <summary>Clusters covered by the refcount blocks the table can point at.</summary>
    public long CoveredClusters => (long)_entries.Length << _geometry.RefcountBlockBits;

    public RefcountTableEntry this[long index] => index < _entries.Length ? new RefcountTableEntry(_entries[index]) : default;

    /// <summary>Reads the refcount table of <paramref name="clusters"/> clusters at <paramref name="offset"/>.</summary>
    /// <remarks>With <paramref name="zerosPastEnd"/> entries past the end of the file read as zeros (as QEMU reads them) instead of the table being refused.</remarks>
    public static async ValueTask<RefcountTable> ReadAsync(IStorage storage, Geometry geometry, TableCache blocks, long offset, int clusters, bool async, CancellationToken cancellationToken, bool zerosPastEnd = false)
    {
        var bytes = (long)clusters * geometry.ClusterSize;
        if (bytes > Qcow2Layout.MaxRefcountTableBytes)
        {
            throw Qcow2Corruption.Create("refcount table", $"{clusters} clusters exceed QEMU's {Qcow2Layout.MaxRefcountTableBytes >> 20} MiB limit", offset);
        }

        var buffer = new byte[bytes];
        if (zerosPastEnd)
        {
            await storage.ReadAsync(offset, buffer, async, cancellationToken).ConfigureAwait(false); // the rest stays zero
        }
        else if (offset + bytes > storage.Length)
        {
            throw Qcow2Corruption.Create("refcount table", $"{bytes} bytes extend past the end of the file ({storage.Length} bytes)", offset);
        }
        else
        {
            await storage.ReadStructureAsync(offset, buffer, "refcount table", async, cancellationToken).ConfigureAwait(false);
        }

        var entries = new ulong[bytes / Qcow2Layout.RefcountTableEntrySize];
        for (var i = 0; i < entries.Length; i++)
        {
            entries[i] = BinaryPrimitives.ReadUInt64BigEndian(buffer.AsSpan(i * 8));
        }

        return new RefcountTable(geometry, blocks, offset, clusters, entries);
    }

    /// <summary>
    /// Offset of the refcount block covering <paramref name="clusterIndex"/>, 0 when none exists.
    /// </summary>
    /// <exception cref="InvalidDataException">The table entry is misaligned or has reserved bits set.</exception>
    public long BlockOffsetFor(long clusterIndex, long fileLength)
    {
        var tableIndex = clusterIndex >> _geometry.RefcountBlockBits;
        var entry = this[tableIndex];
        var blockOffset = entry.BlockOffset;
        if (blockOffset == 0)
        {
            return 0;
        }

        if (!_geometry.IsClusterAligned(blockOffset) || entry.ReservedBits != 0)
        {
            throw Qcow2Corruption.Create("refcount table", $"entry {tableIndex} (0x{entry.Raw:x16}) is not a cluster-aligned refcount block offset", Offset);
        }

        if (blockOffset >= fileLength)
        {
            throw Qcow2Corruption.Create("refcount table", $"entry {tableIndex} points at a refcount block at 0x{blockOffset:x}, past the end of the file", Offset);
        }

        return blockOffset;
    }

    /// <summary>The refcount of host cluster <paramref name="clusterIndex"/> (0 where no block exists).</summary>
    public async ValueTask<ulong> GetAsync(long clusterIndex, long fileLength, bool async, CancellationToken cancellationToken)
    {
        var blockOffset = BlockOffsetFor(clusterIndex, fileLength);
        if (blockOffset == 0)
        {
            return 0;
        }

        using var block = await _blocks.GetAsync(blockOffset, async, cancellationToken).ConfigureAwait(false);
        return RefcountBlock.Get(block.Span, (int)(clusterIndex & (_geometry.RefcountBlockEntries - 1)), _geometry.RefcountOrder);
    }

    /// <summary>Sets one table entry in memory (the caller writes it to disk).</summary>
    public void SetInMemory(long index, long blockOffset)
    {
        _entries[index] = (ulong)blockOffset;
        Version++;
    }

    /// <summary>
    /// Bumped by every change of an entry or of the table's place, so that the overlap index
    /// (<see cref="MetadataOverlapTracker"/>) sees when to rebuild. Changed under the metadata lock.
    /// </summary>
    public int Version { get; private set; }

    /// <summary>The entries as they are now (read under the metadata lock).</summary>
    public ReadOnlySpan<ulong> Entries => _entries;

    /// <summary>Encodes the table for writing.</summary>
    public byte[] Encode() => Encode(_entries, Clusters, _geometry);

    /// <summary>Encodes <paramref name="entries"/> as a table of <paramref name="clusters"/> clusters.</summary>
    public static byte[] Encode(ReadOnlySpan<ulong> entries, int clusters, Geometry geometry)
    {
        var buffer = new byte[(long)clusters * geometry.ClusterSize];
        for (var i = 0; i < entries.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(i * 8), entries[i]);
        }

        return buffer;
    }

    /// <summary>A copy of the entries.</summary>
    public ulong[] ToArray() => (ulong[])_entries.Clone();

    /// <summary>Switches to a new, larger table.</summary>
    public void Replace(long offset, int clusters, ulong[] entries)
    {
        Offset = offset;
        Clusters = clusters;
        _entries = entries;
        Version++;
    }
}
