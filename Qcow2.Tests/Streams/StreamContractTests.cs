using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Streams;

/// <summary>
/// How a disk-like stream must behave (DESIGN §6): exact Length, reads past the end return 0,
/// seeks anywhere, sync/async/Span/array overloads agree. Every stream type inherits this fixture.
/// </summary>
public abstract class StreamContractTests : TempDirectoryFixture
{
    protected const int ContentLength = 1_048_064; // not a multiple of the cluster size

    protected byte[] Content { get; } = MakeContent();

    /// <summary>A read-only stream whose bytes are <see cref="Content"/>.</summary>
    protected abstract Stream OpenStream();

    [Test]
    public void Length_is_exact_and_position_starts_at_zero()
    {
        using var stream = OpenStream();
        stream.Length.ShouldBe(ContentLength);
        stream.Position.ShouldBe(0);
        stream.CanRead.ShouldBeTrue();
        stream.CanSeek.ShouldBeTrue();
    }

    [Test]
    public void Reading_everything_returns_the_content()
    {
        using var stream = OpenStream();
        var copy = new MemoryStream();
        stream.CopyTo(copy, 70_000);
        copy.ToArray().ShouldBe(Content);
    }

    [Test]
    public void Reads_past_the_end_return_zero_bytes()
    {
        using var stream = OpenStream();
        stream.Position = ContentLength + 1000;
        stream.Read(new byte[10], 0, 10).ShouldBe(0);
        stream.Position = ContentLength;
        stream.ReadByte().ShouldBe(-1);
    }

    [Test]
    public void A_read_across_the_end_is_short()
    {
        using var stream = OpenStream();
        stream.Position = ContentLength - 100;
        var buffer = new byte[300];
        stream.Read(buffer, 0, 300).ShouldBe(100);
        buffer.AsSpan(0, 100).ToArray().ShouldBe(Content[^100..]);
        stream.Position.ShouldBe(ContentLength);
    }

    [Test]
    public void Seek_from_each_origin()
    {
        using var stream = OpenStream();
        stream.Seek(1000, SeekOrigin.Begin).ShouldBe(1000);
        stream.Seek(24, SeekOrigin.Current).ShouldBe(1024);
        stream.Seek(-24, SeekOrigin.End).ShouldBe(ContentLength - 24);
        stream.ReadByte().ShouldBe(Content[ContentLength - 24]);
        Should.Throw<IOException>(() => stream.Seek(-1, SeekOrigin.Begin));
    }

    [Test]
    public void Span_array_and_async_reads_agree([Values(0, 511, 65535, 65536, 700_001)] int offset)
    {
        using var stream = OpenStream();
        var expected = Content.AsSpan(offset, 20_000).ToArray();
        var span = new byte[20_000];
        stream.Position = offset;
        stream.ReadExactly(span.AsSpan());
        var array = new byte[20_010];
        stream.Position = offset;
        stream.ReadExactly(array, 10, 20_000);
        var memory = new byte[20_000];
        stream.Position = offset;
        stream.ReadExactlyAsync(memory.AsMemory()).AsTask().GetAwaiter().GetResult();
        span.ShouldBe(expected);
        array[10..].ShouldBe(expected);
        memory.ShouldBe(expected);
    }

    [Test]
    public void Set_length_to_the_current_length_changes_nothing()
    {
        // Disk libraries (DiscUtils' Raw.Disk.Initialize) call SetLength(Length) on the streams they are given.
        using var stream = OpenStream();
        stream.Position = 1234;
        stream.SetLength(ContentLength);
        stream.Length.ShouldBe(ContentLength);
        stream.Position.ShouldBe(1234);
        Should.Throw<NotSupportedException>(() => stream.SetLength(ContentLength + 512));
    }

    [Test]
    public void Disposed_stream_refuses_use()
    {
        var stream = OpenStream();
        stream.Dispose();
        Should.Throw<ObjectDisposedException>(() => _ = stream.Length);
    }

    private static byte[] MakeContent()
    {
        var content = new byte[ContentLength];
        new Random(42).NextBytes(content.AsSpan(0, 300_000));
        content.AsSpan(500_000, 100_000).Fill(0x77);
        new Random(43).NextBytes(content.AsSpan(ContentLength - 5000));
        return content;
    }
}
