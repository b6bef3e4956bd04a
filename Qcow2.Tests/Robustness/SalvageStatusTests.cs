using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Robustness;

/// <summary>
/// convert --salvage on a source whose allocation status fails for a sector that still reads (a
/// raw file whose SEEK_DATA fails there): qemu-img warns twice — when it maps the disk and when it
/// asks again just before copying the sector — each time with the error the status gave, then
/// copies the sector's bytes. The library reports the same two errors and copies the same bytes.
/// </summary>
[TestFixture]
public class SalvageStatusTests : TempDirectoryFixture
{
    private const long BadSector = 64 << 10;

    [Test]
    public void A_sector_whose_status_fails_but_whose_data_reads_is_reported_twice_with_the_status_error_and_copied()
    {
        var path = PathOf("source.raw");
        var bytes = new byte[256 << 10];
        new Random(3).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);
        var statusErrors = new List<(long Offset, string Message)>();
        var readErrors = new List<long>();
        var copy = new MemoryStream();
        using (var source = DiskSource.FromStorage(new StatusFailsAt(FileStorage.Open(path, writable: false), BadSector), "raw"))
        using (var target = new StreamStorage(copy, leaveOpen: true))
        {
            ImageCopier.CopyToRaw(source, target, new ImageCopyOptions
            {
                OnStatusError = (offset, error) => statusErrors.Add((offset, error.Message)),
                OnReadError = (offset, _) => readErrors.Add(offset),
            });
        }

        statusErrors.ShouldBe([(BadSector, "Input/output error"), (BadSector, "Input/output error")]);
        readErrors.ShouldBeEmpty();
        copy.ToArray().ShouldBe(bytes);
    }

    /// <summary>A file whose data extents cannot be asked about at one sector: the query fails there, and extents before it end at it.</summary>
    private sealed class StatusFailsAt(IStorage inner, long bad) : IStorage
    {
        public long Length => inner.Length;

        public bool CanWrite => inner.CanWrite;

        public string? Path => inner.Path;

        public int Read(long offset, Span<byte> buffer) => inner.Read(offset, buffer);

        public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) => inner.ReadAsync(offset, buffer, cancellationToken);

        public void Write(long offset, ReadOnlySpan<byte> buffer) => inner.Write(offset, buffer);

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken) => inner.WriteAsync(offset, buffer, cancellationToken);

        public void SetLength(long length) => inner.SetLength(length);

        public void Flush() => inner.Flush();

        public ValueTask FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

        public bool TryGetDataExtent(long offset, out bool isData, out long extentEnd)
        {
            if (offset >= bad && offset < bad + 512)
            {
                throw new IOException("Input/output error");
            }

            isData = true;
            extentEnd = offset < bad ? bad : inner.Length;
            return true;
        }

        public void Dispose() => inner.Dispose();
    }
}
