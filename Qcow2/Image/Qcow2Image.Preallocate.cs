using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// Gives every guest cluster an L2 entry and a host cluster (QEMU's preallocate_co): each L2
    /// table first, then its data clusters as one contiguous run. With extended L2 the subclusters
    /// stay unallocated, as QEMU leaves them. Falloc reserves the data's disk space, full writes zeros.
    /// </summary>
    private async ValueTask PreallocateAsync(Preallocation mode, bool async, CancellationToken cancellationToken)
    {
        var geometry = _core.Geometry;
        var size = Size;
        var clusters = geometry.ClustersFor(size);
        using var everything = await _core.GuestLock.AcquireAsync(0, long.MaxValue, exclusive: true, async, cancellationToken).ConfigureAwait(false);
        using var locked = await _core.MetadataLock.AcquireAsync(async, cancellationToken).ConfigureAwait(false);
        var tables = _core.Tables!;
        var data = geometry.ExternalDataFile ? _core.DataFile : _core.File;
        for (long first = 0; first < clusters; first += geometry.L2Entries)
        {
            var count = (int)Math.Min(geometry.L2Entries, clusters - first);
            var guest = first << geometry.ClusterBits;
            using var table = await tables.GetWritableAsync(guest, async, cancellationToken).ConfigureAwait(false);
            var host = geometry.ExternalDataFile
                ? guest
                : await _core.RefcountManager!.AllocateClustersAsync(count, async, cancellationToken).ConfigureAwait(false);
            var bytes = (long)count << geometry.ClusterBits;
            if (mode == Preallocation.Full)
            {
                var zeros = new byte[Math.Min(bytes, 1 << 20)];
                for (long done = 0; done < bytes; done += zeros.Length)
                {
                    await data.WriteAsync(host + done, zeros.AsMemory(0, (int)Math.Min(zeros.Length, bytes - done)), async, cancellationToken).ConfigureAwait(false);
                }
            }
            else if (mode == Preallocation.Falloc)
            {
                data.Reserve(host, bytes);
            }
            else if (host + bytes > data.Length)
            {
                data.SetLength(host + bytes); // metadata: the clusters exist in the file, as holes
            }

            if (!geometry.ExternalDataFile)
            {
                _core.NoteFileEnd(host + bytes);
            }

            await tables.OrderAfterRefcountsAsync(async, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < count; i++)
            {
                var offset = (first + i) << geometry.ClusterBits;
                tables.SetEntry(table, offset, L2Entry.Normal(host + ((long)i << geometry.ClusterBits), copied: true), default);
            }
        }

        await FlushLockedAsync(async, cancellationToken).ConfigureAwait(false);
    }
}
