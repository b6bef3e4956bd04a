namespace QcowDedup.Qcow2.Dedup.Journal;

/// <summary>Where index structures live: positional reads and writes of the image file's reserved clusters.</summary>
internal interface IIndexDevice
{
    void Read(long offset, Span<byte> buffer);

    void Write(long offset, ReadOnlySpan<byte> buffer);
}
