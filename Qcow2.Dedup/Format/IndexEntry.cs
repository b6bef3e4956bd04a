using System.Buffers.Binary;

namespace QcowDedup.Qcow2.Dedup.Format;

/// <summary>
/// One index entry: a cluster's hash, the host cluster holding those bytes, the guest cluster it
/// was written for (to verify the host cluster still holds guest data), the sequence number it
/// was recorded with (to detect that the host cluster was freed or rewritten since), and the
/// epoch (entries from before an unclean shutdown are checked byte for byte before use).
/// Stored as 64 bytes: hash, host, guest, sequence, epoch, CRC-32C of the first 60 bytes.
/// </summary>
internal readonly record struct IndexEntry(ClusterHash Hash, long HostOffset, long GuestOffset, long Sequence, uint Epoch)
{
    public const int Size = 64;
    private const int HostOffsetField = 32;
    private const int GuestOffsetField = 40;
    private const int SequenceField = 48;
    private const int EpochField = 56;
    private const int CrcField = 60;

    /// <summary>Empty slots hold zeros; a host offset of 0 (the header cluster) never holds data.</summary>
    public bool IsEmpty => HostOffset == 0;

    public void Write(Span<byte> destination)
    {
        Hash.Write(destination);
        BinaryPrimitives.WriteInt64BigEndian(destination[HostOffsetField..], HostOffset);
        BinaryPrimitives.WriteInt64BigEndian(destination[GuestOffsetField..], GuestOffset);
        BinaryPrimitives.WriteInt64BigEndian(destination[SequenceField..], Sequence);
        BinaryPrimitives.WriteUInt32BigEndian(destination[EpochField..], Epoch);
        BinaryPrimitives.WriteUInt32BigEndian(destination[CrcField..], Crc32C.Compute(destination[..CrcField]));
    }

    /// <summary>Decodes an entry; false for an empty slot or bytes whose CRC does not match.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out IndexEntry entry)
    {
        entry = default;
        if (BinaryPrimitives.ReadUInt32BigEndian(source[CrcField..]) != Crc32C.Compute(source[..CrcField]))
        {
            return false;
        }

        entry = new IndexEntry(
            ClusterHash.Read(source),
            BinaryPrimitives.ReadInt64BigEndian(source[HostOffsetField..]),
            BinaryPrimitives.ReadInt64BigEndian(source[GuestOffsetField..]),
            BinaryPrimitives.ReadInt64BigEndian(source[SequenceField..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[EpochField..]));
        return !entry.IsEmpty;
    }
}
