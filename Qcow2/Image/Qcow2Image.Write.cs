namespace QcowDedup.Qcow2.Image;

public sealed partial class Qcow2Image
{
    /// <summary>Writes guest bytes. This build reads only; the writer lands separately.</summary>
    /// <exception cref="NotSupportedException">Always, until the writer lands.</exception>
    public void Write(long offset, ReadOnlySpan<byte> buffer) => throw WritingUnsupported();

    /// <inheritdoc cref="Write(long, ReadOnlySpan{byte})"/>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => throw WritingUnsupported();

    /// <summary>Makes written data durable.</summary>
    public void Flush() => ThrowIfDisposed();

    /// <inheritdoc cref="Flush"/>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return ValueTask.CompletedTask;
    }

    /// <summary>Changes the virtual size.</summary>
    /// <exception cref="NotSupportedException">Always, until the writer lands.</exception>
    public void Resize(long newSize) => throw WritingUnsupported();

    private ValueTask PrepareForWritingAsync(bool async, CancellationToken cancellationToken) => throw WritingUnsupported();

    private static ValueTask CloseCoreAsync(bool async, CancellationToken cancellationToken) => ValueTask.CompletedTask;

    private static NotSupportedException WritingUnsupported() => new("Writing qcow2 images is not available in this build.");
}
