using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>The first bytes of a new image, as qemu-img create lays them out.</summary>
internal static class EmptyImageWriter
{
    /// <summary>
    /// Writes the header in cluster 0, a one-cluster refcount table in cluster 1 and its first
    /// refcount block in cluster 2, counting clusters 0–2, then flushes.
    /// </summary>
    public static void Write(IStorage storage, HeaderCluster header, int refcountOrder)
    {
        var clusterSize = header.Header.ClusterSize;
        storage.Write(0, header.Serialize());
        var table = new byte[clusterSize];
        BinaryPrimitives.WriteUInt64BigEndian(table, (ulong)(2L * clusterSize));
        storage.Write(clusterSize, table);
        var block = new byte[clusterSize];
        for (var cluster = 0; cluster < 3; cluster++) // a block covers at least 64 clusters
        {
            RefcountBlock.Set(block, cluster, refcountOrder, 1);
        }

        storage.Write(2L * clusterSize, block);
        storage.Flush();
    }
}
