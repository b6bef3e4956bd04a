using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;

namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>Byte-level edits of image files, to build images no well-behaved writer would make.</summary>
public static class ImagePatch
{
    public static ulong ReadU64(string path, long offset)
    {
        using var file = File.OpenRead(path);
        var buffer = new byte[8];
        file.Position = offset;
        file.ReadExactly(buffer);
        return BinaryPrimitives.ReadUInt64BigEndian(buffer);
    }

    public static void WriteU64(string path, long offset, ulong value)
    {
        var buffer = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, value);
        WriteBytes(path, offset, buffer);
    }

    public static void WriteU32(string path, long offset, uint value)
    {
        var buffer = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(buffer, value);
        WriteBytes(path, offset, buffer);
    }

    public static void WriteBytes(string path, long offset, ReadOnlySpan<byte> bytes)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Write);
        file.Position = offset;
        file.Write(bytes);
    }

    public static void Truncate(string path, long length)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Write);
        file.SetLength(length);
    }

    /// <summary>Decodes cluster 0, lets the caller change it, and writes it back with our serializer.</summary>
    public static void EditHeader(string path, Func<HeaderCluster, HeaderCluster> edit)
    {
        var cluster0 = ReadCluster0(path);
        var edited = edit(HeaderCluster.Parse(cluster0));
        WriteBytes(path, 0, edited.Serialize());
    }

    public static HeaderCluster ReadHeader(string path) => HeaderCluster.Parse(ReadCluster0(path));

    /// <summary>Host offset of the L2 entry mapping <paramref name="guestOffset"/> (the L2 table must exist).</summary>
    public static long L2EntryOffset(string path, long guestOffset)
    {
        var header = ReadHeader(path).Header;
        var l1Index = guestOffset >> header.L2CoverageBits;
        var l2Table = (long)(ReadU64(path, header.L1TableOffset + (l1Index * 8)) & L1Entry.OffsetMask);
        var l2Index = (guestOffset >> header.ClusterBits) & (header.L2Entries - 1);
        return l2Table + (l2Index * header.L2EntrySize);
    }

    private static byte[] ReadCluster0(string path)
    {
        using var file = File.OpenRead(path);
        var start = new byte[24];
        file.ReadExactly(start);
        var clusterBits = BinaryPrimitives.ReadInt32BigEndian(start.AsSpan(20));
        var cluster = new byte[1 << clusterBits];
        file.Position = 0;
        file.ReadAtLeast(cluster, cluster.Length, throwOnEndOfStream: false);
        return cluster;
    }
}
