using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// A raw backing file: guest offset equals file offset; holes read as zeros. Also the guest content
/// of a disk in another format (<paramref name="format"/>), served by a storage that decodes it.
/// </summary>
internal sealed class RawDisk(IStorage storage, string displayName, string format = "raw") : IGuestDisk
{
    public long Size { get; } = storage.Length;

    public string Format => format;

    public string? FilePath => storage.Path ?? displayName;

    public IGuestDisk? BackingDisk => null;

    public IStorage File => storage;

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        var inside = (int)Math.Clamp(Size - offset, 0, buffer.Length);
        if (inside > 0)
        {
            await storage.ReadZeroFilledAsync(offset, buffer[..inside], async, cancellationToken).ConfigureAwait(false);
        }

        buffer.Span[inside..].Clear();
    }

    public ValueTask MapAsync(long offset, long length, int depth, List<MapEntry> output, bool async, CancellationToken cancellationToken)
    {
        var end = offset + length;
        var position = offset;
        while (position < end)
        {
            if (!storage.TryGetDataExtent(position, out var isData, out var extentEnd) || extentEnd <= position)
            {
                isData = true;
                extentEnd = end;
            }

            var next = Math.Min(extentEnd, end);
            output.Add(new MapEntry(position, next - position, depth, Present: true, Zero: !isData, Data: isData, position, FilePath));
            position = next;
        }

        return ValueTask.CompletedTask;
    }

    public void Dispose() => storage.Dispose();
}
