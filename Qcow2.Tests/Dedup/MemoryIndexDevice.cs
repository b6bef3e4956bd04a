using QcowDedup.Qcow2.Dedup.Journal;

namespace QcowDedup.Qcow2.Tests.Dedup;

/// <summary>An in-memory device for index structure tests; counts writes.</summary>
internal sealed class MemoryIndexDevice(int size) : IIndexDevice
{
    public byte[] Bytes { get; } = new byte[size];

    public int Writes { get; private set; }

    public void Read(long offset, Span<byte> buffer) => Bytes.AsSpan((int)offset, buffer.Length).CopyTo(buffer);

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        buffer.CopyTo(Bytes.AsSpan((int)offset));
        Writes++;
    }
}
