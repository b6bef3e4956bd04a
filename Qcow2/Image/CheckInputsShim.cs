using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>TEMPORARY: what the check types read, until they take narrow inputs (issue 10, merge of the check branch).</summary>
internal sealed class ImageCore(ImageMetadata metadata, RefcountAllocator? refcounts)
{
    public IStorage File => metadata.File;

    public HeaderCluster Header => metadata.Header;

    public Geometry Geometry => metadata.Geometry;

    public bool Writable => metadata.Writable;

    public L1Table ActiveL1 => metadata.ActiveL1;

    public IReadOnlyList<SnapshotTableEntry> Snapshots { get => metadata.Snapshots; set => metadata.Snapshots = value; }

    public IReadOnlyList<BitmapDirectoryEntry> Bitmaps => metadata.Bitmaps;

    public TableCache L2Cache => metadata.L2Cache;

    public TableCache RefcountCache => metadata.RefcountCache;

    public HostReservations Reservations => metadata.Reservations;

    public RefcountAllocator? RefcountAllocator => refcounts;

    public RefcountTable? Refcounts => metadata.Refcounts;

    public long SnapshotTableBytes => metadata.SnapshotTableBytes;

    public void NoteFileEnd(long end) => metadata.NoteFileEnd(end);

    public MetadataOverlapIndex RefreshOverlapIndex() => metadata.RefreshOverlapIndex();

    public ValueTask<RefcountTable> GetRefcountsLockedAsync(bool async, CancellationToken cancellationToken) => metadata.GetRefcountsLockedAsync(async, cancellationToken);

    public ValueTask WriteHeaderFieldsAsync(Qcow2Header updated, int fieldOffset, int length, bool async, CancellationToken cancellationToken) =>
        metadata.WriteHeaderFieldsAsync(updated, fieldOffset, length, async, cancellationToken);
}
