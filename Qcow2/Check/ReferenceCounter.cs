using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Check;

/// <summary>
/// Builds the in-memory refcount table of QEMU's check (calculate_refcounts): one reference per
/// cluster touched by the header, the active L1/L2 tables and their data, every snapshot's
/// tables and data, the snapshot table, the refcount table and blocks, the LUKS area and the
/// bitmaps. Every inconsistency it meets is counted the way qemu-img check counts it.
/// </summary>
internal sealed partial class ReferenceCounter
{
    /// <summary>
    /// How far past the end of the file a repair follows QEMU in extending the file to reach a
    /// refcount block (a few clusters, as a crash or a short truncation leaves; the check parity
    /// corpus has 20). Further out the table entry is treated as corrupt and the refcount
    /// structure rebuilt: the file, the in-memory reference count and the time of the check then
    /// stay proportional to what the image holds.
    /// </summary>
    public const long MaxRepairGrowth = 64L << 20;

    private readonly ImageMetadata _metadata;
    private readonly RepairWriter _repairs;
    private readonly Geometry _geometry;
    private readonly CheckReport _report;
    private readonly CorruptionSignal _signal;
    private readonly ulong _max;
    private long _fileLength;
    private bool _fixErrors;
    private readonly List<(long First, long End)> _pastEnd = [];
    private (long First, long End)[]? _pastEndSorted;
    private byte[]? _l2Buffer;

    public ReferenceCounter(ImageMetadata metadata, CheckReport report, CorruptionSignal signal)
    {
        _metadata = metadata;
        _repairs = new RepairWriter(metadata);
        _geometry = metadata.Geometry;
        _report = report;
        _signal = signal;
        _max = Math.Min(_geometry.MaxRefcount, uint.MaxValue);
        _fileLength = metadata.File.Length;
        References = new ReferenceCounts(_geometry.ClustersFor(_fileLength));
    }

    /// <summary>Whether a file of <paramref name="fileLength"/> bytes has more clusters than a check covers (QEMU: "File too large").</summary>
    public static bool IsTooLarge(Geometry geometry, long fileLength) => geometry.ClustersFor(fileLength) > ReferenceCounts.MaxClusters;

    /// <summary>Computed references per host cluster (index = cluster number).</summary>
    public ReferenceCounts References { get; }

    /// <summary>Whether a refcount block problem means the whole structure must be rebuilt.</summary>
    public bool RebuildNeeded { get; private set; }

    /// <summary>
    /// Counts every reference. Fragmentation figures are gathered for the active L1 only. With
    /// <paramref name="fixErrors"/> (-r all) the repairs QEMU makes while counting are made too.
    /// </summary>
    /// <exception cref="CheckAbortedException">A repair write was refused by the overlap check.</exception>
    public async ValueTask CalculateAsync(RefcountTable refcounts, bool fixErrors, bool async, CancellationToken cancellationToken)
    {
        _fixErrors = fixErrors && _metadata.Writable;
        var header = _metadata.Header.Header;
        Add(0, _geometry.ClusterSize);
        await CountL1Async(header.L1TableOffset, header.L1Size, active: true, async, cancellationToken).ConfigureAwait(false);

        if (_geometry.ExternalDataFile && _metadata.Snapshots.Count > 0)
        {
            _report.Error($"ERROR {_metadata.Snapshots.Count} snapshots in image with data file");
        }

        long snapshotTableSize = 0;
        foreach (var snapshot in _metadata.Snapshots)
        {
            snapshotTableSize += snapshot.StoredLength;
            if (!_geometry.IsClusterAligned(snapshot.L1TableOffset))
            {
                _report.Error($"ERROR snapshot {snapshot.Id} ({snapshot.Name}) l1_offset=0x{snapshot.L1TableOffset:x}: L1 table is not cluster aligned; snapshot table entry corrupted");
                continue;
            }

            if ((long)snapshot.L1Size * Qcow2Layout.L1EntrySize > Qcow2Layout.MaxL1TableBytes)
            {
                _report.Error($"ERROR snapshot {snapshot.Id} ({snapshot.Name}) l1_size=0x{snapshot.L1Size:x}: L1 table is too large; snapshot table entry corrupted");
                continue;
            }

            await CountL1Async(snapshot.L1TableOffset, snapshot.L1Size, active: false, async, cancellationToken).ConfigureAwait(false);
        }

        Add(header.SnapshotsOffset, snapshotTableSize);
        Add(refcounts.Offset, (long)refcounts.Size * Qcow2Layout.RefcountTableEntrySize);
        if (_metadata.Header.EncryptionHeader is { } luks)
        {
            Add(luks.Offset, luks.Length);
        }

        await CountBitmapsAsync(async, cancellationToken).ConfigureAwait(false);
        CountRefcountBlocks(refcounts);
    }

    /// <summary>Adds one reference to every cluster of [offset, offset + size) (qcow2_inc_refcounts_imrt).</summary>
    public void Add(long offset, long size)
    {
        if (size <= 0)
        {
            return;
        }

        // Offsets come from the image as unsigned 64-bit values: one with the top bit set is far
        // past the end, not negative, and a region must not wrap around.
        if (offset < 0 || offset > long.MaxValue - size || offset + size - _fileLength >= _geometry.ClusterSize)
        {
            _report.Error($"ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{offset:x} size 0x{size:x}");
            if (offset >= 0)
            {
                _pastEnd.Add((offset >> _geometry.ClusterBits, ((Math.Min(offset, long.MaxValue - size) + size - 1) >> _geometry.ClusterBits) + 1));
                _pastEndSorted = null;
            }

            return;
        }

        var first = offset >> _geometry.ClusterBits;
        var last = (offset + size - 1) >> _geometry.ClusterBits;
        References.Grow(last + 1);
        for (var cluster = first; cluster <= last; cluster++)
        {
            var references = References[cluster];
            if (references >= _max)
            {
                _report.Error($"ERROR: overflow cluster offset=0x{cluster << _geometry.ClusterBits:x}");
                _report.Note("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing");
                continue;
            }

            References.Set(cluster, references + 1);
        }
    }

    /// <summary>
    /// Whether <paramref name="cluster"/> lies in a region something references but that the count
    /// left out for reaching past the end of the file (as QEMU does): missing, not leaked.
    /// </summary>
    public bool IsReferencedPastEnd(long cluster)
    {
        var ranges = _pastEndSorted ??= [.. _pastEnd.OrderBy(r => r.First)];
        var low = 0;
        var high = ranges.Length - 1;
        while (low <= high)
        {
            var middle = (low + high) >>> 1;
            if (ranges[middle].First > cluster)
            {
                high = middle - 1;
            }
            else
            {
                low = middle + 1;
            }
        }

        // Ranges may overlap: any range starting at or before the cluster may cover it.
        for (var i = high; i >= 0; i--)
        {
            if (ranges[i].End > cluster)
            {
                return true;
            }
        }

        return false;
    }

    private async ValueTask CountL1Async(long offset, int size, bool active, bool async, CancellationToken cancellationToken)
    {
        if (size == 0)
        {
            return;
        }

        Add(offset, (long)size * Qcow2Layout.L1EntrySize);
        var bytes = new byte[(long)size * Qcow2Layout.L1EntrySize];
        await _metadata.File.ReadZeroFilledAsync(offset, bytes, async, cancellationToken).ConfigureAwait(false);

        for (var i = 0; i < size; i++)
        {
            var entry = new L1Entry(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8)));
            if (entry.Raw == 0)
            {
                continue;
            }

            if (entry.ReservedBits != 0)
            {
                _report.Error($"ERROR found L1 entry with reserved bits set: {entry.Raw:x}");
            }

            var l2Offset = (long)(entry.Raw & L1Entry.OffsetMask);
            Add(l2Offset, _geometry.ClusterSize);
            if (!_geometry.IsClusterAligned(l2Offset))
            {
                _report.Error($"ERROR l2_offset={l2Offset:x}: Table is not cluster aligned; L1 entry corrupted");
            }

            await CountL2Async(l2Offset, active, async, cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask CountL2Async(long l2Offset, bool active, bool async, CancellationToken cancellationToken)
    {
        var fragmentation = active ? new FragmentationTracker() : null;
        var table = _l2Buffer ??= new byte[_geometry.ClusterSize]; // one buffer: an L1 may name thousands of tables
        await _metadata.File.ReadZeroFilledAsync(l2Offset, table, async, cancellationToken).ConfigureAwait(false);

        for (var i = 0; i < _geometry.L2Entries; i++)
        {
            var entry = L2Table.ReadEntry(table, i, _geometry.ExtendedL2);
            var bitmap = L2Table.ReadBitmap(table, i, _geometry.ExtendedL2);
            var type = entry.GetClusterType(_geometry.ExtendedL2, _geometry.ExternalDataFile);
            if (type != ClusterType.Compressed && entry.StandardReservedBits != 0)
            {
                _report.Error($"ERROR found l2 entry with reserved bits set: {entry.Raw:x}");
            }

            switch (type)
            {
                case ClusterType.Compressed:
                    CountCompressed(i, entry, bitmap, fragmentation);
                    break;
                case ClusterType.Normal:
                case ClusterType.ZeroAllocated:
                    var offset = entry.HostOffset;
                    if (bitmap.HasOverlap)
                    {
                        _report.Error($"ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap");
                    }

                    if (!_geometry.IsClusterAligned(offset))
                    {
                        var containsData = _geometry.ExtendedL2 ? (bitmap.Raw & SubclusterBitmap.AllAllocatedMask) != 0 : !entry.HasZeroFlag;
                        if (containsData)
                        {
                            _report.Error($"ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted.");
                        }
                        else
                        {
                            _report.Error($"{(_fixErrors ? "Repairing" : "ERROR")} offset={offset:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.");
                            if (_fixErrors)
                            {
                                await ZeroEntryAsync(l2Offset, table, i, active, async, cancellationToken).ConfigureAwait(false);
                                continue; // the entry no longer points anywhere: nothing to count
                            }
                        }
                    }

                    fragmentation?.Allocated(offset, _geometry.ClusterSize);
                    if (!_geometry.ExternalDataFile)
                    {
                        Add(offset, _geometry.ClusterSize);
                    }

                    break;
                case ClusterType.Unallocated when (bitmap.Raw & SubclusterBitmap.AllAllocatedMask) != 0:
                    _report.Error("ERROR: Unallocated cluster has non-zero subcluster allocation map");
                    break;
            }
        }

        if (fragmentation is not null)
        {
            _report.Allocated += fragmentation.AllocatedCount;
            _report.Fragmented += fragmentation.FragmentedCount;
        }
    }

    /// <summary>
    /// QEMU's fix_l2_entry_by_zero: an unaligned preallocated entry carries only zeros, so it
    /// becomes a plain zero entry (every allocated subcluster a zero one), written at once.
    /// </summary>
    /// <exception cref="CheckAbortedException">The entry lies on other metadata (QEMU then stops the check).</exception>
    private async ValueTask ZeroEntryAsync(long l2Offset, byte[] table, int index, bool active, bool async, CancellationToken cancellationToken)
    {
        if (_geometry.ExtendedL2)
        {
            var bitmap = L2Table.ReadBitmap(table, index, extended: true).Raw;
            L2Table.WriteBitmap(table, index, new SubclusterBitmap((bitmap | (bitmap << 32)) & SubclusterBitmap.AllZeroMask));
            L2Table.WriteEntry(table, index, extended: true, L2Entry.Unallocated);
        }
        else
        {
            L2Table.WriteEntry(table, index, extended: false, L2Entry.ZeroPlain);
        }

        var entryOffset = l2Offset + ((long)index * _geometry.L2EntrySize);
        var entryBytes = table.AsMemory(index * _geometry.L2EntrySize, _geometry.L2EntrySize);
        if (await _repairs.RewriteAsync(entryOffset, entryBytes, active ? MetadataKind.ActiveL2 : MetadataKind.None, async, cancellationToken).ConfigureAwait(false) is { } overlapped)
        {
            await _signal.RaiseAsync($"Preventing invalid write on metadata (overlaps with {overlapped})", async, cancellationToken).ConfigureAwait(false);
            _report.CheckErrors++;
            throw _report.Abort("ERROR: Overlap check failed");
        }

        await _repairs.FlushAsync(async, cancellationToken).ConfigureAwait(false);
        _report.Corruptions--;
        _report.CorruptionsFixed++;
    }

    private void CountCompressed(int index, L2Entry entry, SubclusterBitmap bitmap, FragmentationTracker? fragmentation)
    {
        var descriptor = CompressedClusterDescriptor.Decode(entry, _geometry.ClusterBits);
        if (entry.IsCopied)
        {
            _report.Error($"ERROR: coffset=0x{descriptor.HostOffset:x}: copied flag must never be set for compressed clusters");
        }

        if (_geometry.ExternalDataFile)
        {
            _report.Error($"ERROR compressed cluster {index} with data file, entry=0x{entry.Raw:x}");
            return;
        }

        if (bitmap.Raw != 0)
        {
            _report.Error($"ERROR compressed cluster {index} with non-zero subcluster allocation bitmap, entry=0x{entry.Raw:x}");
            return;
        }

        Add(descriptor.HostOffset, descriptor.CompressedLength);
        if (fragmentation is not null)
        {
            fragmentation.Compressed();
            _report.Compressed++;
        }
    }

    /// <summary>Counts allocated and fragmented clusters of one L2 table, as QEMU's check does.</summary>
    private sealed class FragmentationTracker
    {
        private long _nextContiguous;

        public long AllocatedCount { get; private set; }

        public long FragmentedCount { get; private set; }

        public void Allocated(long offset, int clusterSize)
        {
            AllocatedCount++;
            if (_nextContiguous != 0 && offset != _nextContiguous)
            {
                FragmentedCount++;
            }

            _nextContiguous = offset + clusterSize;
        }

        public void Compressed()
        {
            AllocatedCount++;
            FragmentedCount++; // compressed clusters are fragmented by nature
        }
    }
}
