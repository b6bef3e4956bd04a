using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Metadata;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// What extensions may do to this image. Every call except Read runs under the metadata lock,
    /// so it uses the synchronous forms of the core routines.
    /// </summary>
    private sealed class ExtensionHost(Qcow2Image image, IImageExtension extension) : IImageExtensionHost
    {
        private ImageMetadata Metadata => image.Session.Metadata;

        public bool IsWritable => image.IsWritable;

        public T RunLocked<T>(Func<T> action) => image.RunLocked(action);

        public int FormatVersion => Metadata.Header.Header.Version;

        public int ClusterSize => Metadata.Geometry.ClusterSize;

        public long VirtualSize => image.Size;

        public ulong MaxRefcount => Metadata.Geometry.MaxRefcount;

        // A writable image answers net of the frees its flush has yet to write (RefcountAllocator).
        public ulong GetRefcount(long hostOffset) => image.WritableState is { } writable
            ? SyncOver.Run(writable.Refcounts.GetAsync(hostOffset >> Metadata.Geometry.ClusterBits, async: false, CancellationToken.None))
            : Metadata.GetRefcountLocked(hostOffset);

        public long AllocateReservedClusters(long count)
        {
            ThrowIfReadOnly();
            var offset = SyncOver.Run(WritableState.Refcounts.FindFreeClustersAsync(count, async: false, CancellationToken.None));
            ReserveClusters(offset, count);
            return offset;
        }

        public void ReserveClusters(long hostOffset, long count)
        {
            // The offsets come from the extension's own on-disk metadata: never let them claim
            // clusters the image uses, or writes to them would damage the image.
            var geometry = Metadata.Geometry;
            var structure = $"{extension.FeatureName} area";
            if (hostOffset <= 0 || !geometry.IsClusterAligned(hostOffset) || count <= 0
                || count > (Qcow2Layout.MaxHostOffset - hostOffset) >> geometry.ClusterBits)
            {
                throw Qcow2Corruption.Create(structure, $"{count} clusters at 0x{hostOffset:x} is not a valid cluster range", hostOffset);
            }

            var first = hostOffset >> geometry.ClusterBits;
            if (Metadata.Reservations.Overlaps(first, count))
            {
                throw Qcow2Corruption.Create(structure, "overlaps another reserved area", hostOffset);
            }

            for (var cluster = 0L; cluster < count; cluster++)
            {
                var offset = hostOffset + (cluster << geometry.ClusterBits);
                if (GetRefcount(offset) != 0)
                {
                    throw Qcow2Corruption.Create(structure, $"cluster 0x{offset:x} is in use by the image", offset);
                }
            }

            Metadata.Reservations.Add(first, first + count);
        }

        public void ReleaseClusters(long hostOffset, long count)
        {
            var first = hostOffset >> Metadata.Geometry.ClusterBits;
            Metadata.Reservations.Remove(first, first + count);
            image.WritableState?.Refcounts.NoteReleased(first);
        }

        public void Read(long hostOffset, Span<byte> buffer)
        {
            var read = Metadata.File.Read(hostOffset, buffer);
            buffer[read..].Clear();
        }

        public void Write(long hostOffset, ReadOnlySpan<byte> buffer)
        {
            ThrowIfReadOnly();
            if (!Metadata.TryWriteReserved(hostOffset, buffer))
            {
                throw new InvalidOperationException($"Extension '{extension.FeatureName}' may only write inside clusters it reserved (0x{hostOffset:x}, {buffer.Length} bytes).");
            }
        }

        public void FlushImage() => SyncOver.Run(image.FlushLockedAsync(async: false, CancellationToken.None));

        public void FlushFile() => Metadata.File.Flush();

        public bool CheckAndRepair()
        {
            ThrowIfReadOnly();
            return image.RepairLocked().IsClean;
        }

        public void SetHeaderExtension(ReadOnlySpan<byte> payload, bool autoclearBitSet)
        {
            ThrowIfReadOnly();
            var header = Metadata.Header;
            var bit = (AutoclearFeatures)(1UL << extension.AutoclearBit);
            var others = header.OtherExtensions.Where(e => e.Type != extension.HeaderExtensionType).ToList();
            others.Add(new HeaderExtension(extension.HeaderExtensionType, payload.ToArray()));
            var autoclear = autoclearBitSet ? header.Header.Autoclear | bit : header.Header.Autoclear & ~bit;
            SyncOver.Run(Metadata.RewriteHeaderAsync(header with { Header = header.Header with { Autoclear = autoclear }, OtherExtensions = others }, async: false, CancellationToken.None));
        }

        private WritableState WritableState => image.WritableState ?? throw new InvalidOperationException("The image is open read-only.");

        private void ThrowIfReadOnly()
        {
            if (!IsWritable)
            {
                throw new InvalidOperationException("The image is open read-only.");
            }
        }
    }
}
