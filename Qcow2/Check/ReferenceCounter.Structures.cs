using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Check;

/// <content>Counting the references of the bitmaps and of the refcount structure itself.</content>
internal sealed partial class ReferenceCounter
{
    private async ValueTask CountBitmapsAsync(bool async, CancellationToken cancellationToken)
    {
        if (_metadata.Bitmaps.Count == 0 || _metadata.Header.Bitmaps is not { } extension)
        {
            return;
        }

        Add(extension.DirectoryOffset, extension.DirectorySize);
        foreach (var bitmap in _metadata.Bitmaps)
        {
            if ((long)bitmap.TableSize * _geometry.ClusterSize > BitmapDirectoryEntry.MaxPhysicalSize)
            {
                // QEMU's check_dir_entry refuses it too: a table that large is not a bitmap's.
                _report.Error($"ERROR bitmap '{bitmap.Name}': its table of {bitmap.TableSize} entries describes more than {BitmapDirectoryEntry.MaxPhysicalSize >> 20} MiB of bitmap data");
                continue;
            }

            Add(bitmap.TableOffset, (long)bitmap.TableSize * 8);
            var table = new byte[(long)bitmap.TableSize * 8];
            await _metadata.File.ReadZeroFilledAsync(bitmap.TableOffset, table, async, cancellationToken).ConfigureAwait(false);

            for (var i = 0; i < bitmap.TableSize; i++)
            {
                var entry = new BitmapTableEntry(BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8)));
                var offset = entry.Offset;
                if (!entry.IsValid(_geometry.ClusterSize))
                {
                    _report.Error($"ERROR bitmap '{bitmap.Name}': invalid bitmap table entry 0x{entry.Raw:x}");
                    continue;
                }

                if (offset != 0)
                {
                    Add(offset, _geometry.ClusterSize);
                }
            }
        }
    }

    /// <summary>QEMU's check_refblocks: every refcount block counted once; problems force a rebuild.</summary>
    private void CountRefcountBlocks(RefcountTable refcounts)
    {
        for (var i = 0L; i < refcounts.Size; i++)
        {
            var entry = refcounts[i];
            var rawOffset = entry.Raw & RefcountTableEntry.OffsetMask; // all 55 high bits, as QEMU's REFT_OFFSET_MASK
            var offset = (long)(rawOffset & long.MaxValue);
            if (entry.ReservedBits != 0)
            {
                _report.Error($"ERROR refcount table entry {i} has reserved bits set");
                RebuildNeeded = true;
                continue;
            }

            if (!_geometry.IsClusterAligned(offset))
            {
                _report.Error($"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted");
                RebuildNeeded = true;
                continue;
            }

            if (rawOffset == 0)
            {
                continue;
            }

            var cluster = offset >> _geometry.ClusterBits;
            if (rawOffset >> _geometry.ClusterBits >= (ulong)_geometry.ClustersFor(_fileLength))
            {
                if (_fixErrors && (rawOffset > (ulong)(long.MaxValue - _geometry.ClusterSize) || offset + _geometry.ClusterSize - _fileLength > MaxRepairGrowth))
                {
                    // QEMU would extend the file to reach the block (or fail: EINVAL past INT64_MAX,
                    // "File too large" past what it can count): for an entry pointing at 46 TiB that
                    // is a 46 TiB file and a reference count per cluster of it. Nothing in the image
                    // justifies the space, so the entry is what is corrupt: the structure is rebuilt
                    // from the references, inside the file.
                    _report.Error($"ERROR refcount block {i} is outside image (offset 0x{rawOffset:x}, more than {MaxRepairGrowth >> 20} MiB past the end of the file); rebuilding the refcount structure instead of growing the file");
                    RebuildNeeded = true;
                    continue;
                }

                if (_fixErrors)
                {
                    // QEMU extends the file to cover the block and counts that as fixed.
                    _report.Note($"Repairing refcount block {i} is outside image");
                    _repairs.ExtendFile(offset + _geometry.ClusterSize);
                    _fileLength = _repairs.FileLength;
                    _report.CorruptionsFixed++;
                }
                else
                {
                    _report.Error($"ERROR refcount block {i} is outside image");
                    continue;
                }
            }

            Add(offset, _geometry.ClusterSize);
            if (References[cluster] != 1)
            {
                _report.Error($"ERROR refcount block {i} refcount={References[cluster]}");
                RebuildNeeded = true;
            }
        }
    }
}
