using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// A disk to copy, compare or map: a qcow2 image (read through its backing chain) or raw bytes
/// (a file, an <see cref="IStorage"/> or a seekable <see cref="Stream"/>). Raw sources report
/// their holes as zeros where the file system says so.
/// </summary>
public sealed class DiskSource : IDisposable, IAsyncDisposable
{
    private readonly IGuestDisk _disk;
    private readonly Qcow2Image? _image;
    private readonly bool _owned;

    private DiskSource(IGuestDisk disk, Qcow2Image? image, long size, bool owned)
    {
        _disk = disk;
        _image = image;
        Size = size;
        _owned = owned;
    }

    /// <summary>Guest-visible size in bytes; reads past it return zeros.</summary>
    public long Size { get; }

    /// <summary>"qcow2", "raw", or the format given to <see cref="FromStorage"/>.</summary>
    public string Format => _disk.Format;

    /// <summary>The file the disk is read from, when known.</summary>
    public string? Path => _disk.FilePath;

    /// <summary>Disk space the file occupies (allocated blocks, qemu-img info's "actual-size"); its length where that cannot be learned.</summary>
    public long AllocatedBytes => _image?.Info.ActualSize ?? FileSystemInfoProbe.AllocatedBytes(_disk.File);

    /// <summary>The qcow2 image, when the source is one.</summary>
    public Qcow2Image? Image => _image;

    /// <summary>
    /// Opens the file at <paramref name="path"/> to read, as qcow2 or raw (<paramref name="format"/>,
    /// else by its magic number), locked as qemu-img locks its sources: nobody may write or resize
    /// it meanwhile unless <see cref="Qcow2OpenOptions.ForceShare"/> is set. A raw file's size is
    /// rounded up to whole 512-byte sectors, as QEMU's raw driver does.
    /// </summary>
    /// <exception cref="ArgumentException">The format is neither qcow2 nor raw.</exception>
    public static DiskSource Open(string path, string? format = null, Qcow2OpenOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        options ??= new Qcow2OpenOptions();
        switch (format ?? ProbeFormat(path))
        {
            case "qcow2":
                return FromImage(Qcow2Image.Open(path, options), leaveOpen: false);
            case "raw":
                var request = options.ForceShare ? FileLockRequest.ForceShared : FileLockRequest.Image(writable: false);
                var file = FileStorage.Open(path, new FileStorageOptions { Lock = request, Locking = options.Locking });
                return new DiskSource(new RawDisk(file, path), null, (file.Length + 511) / 512 * 512, owned: true);
            default:
                throw new ArgumentException($"Unknown or unsupported format '{format}' (use qcow2 or raw).", nameof(format));
        }
    }

    /// <summary>Reads an open image. Disposing the source disposes the image unless <paramref name="leaveOpen"/>.</summary>
    public static DiskSource FromImage(Qcow2Image image, bool leaveOpen = true)
    {
        ArgumentNullException.ThrowIfNull(image);
        return new DiskSource(image, image, image.Size, owned: !leaveOpen);
    }

    /// <summary>Reads raw bytes from <paramref name="storage"/>; its length is the disk's size.</summary>
    public static DiskSource FromRaw(IStorage storage, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(storage);
        return new DiskSource(new RawDisk(storage, storage.Path ?? "raw storage"), null, storage.Length, owned: !leaveOpen);
    }

    /// <summary>
    /// Reads the guest content of a disk in another format (vmdk, vhdx…) from a storage that decodes
    /// it: offset = guest offset, length = disk size, and <see cref="IStorage.TryGetDataExtent"/>
    /// telling where the format stores data. <see cref="Format"/> reports <paramref name="format"/>.
    /// </summary>
    public static DiskSource FromStorage(IStorage storage, string format, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(storage);
        ArgumentException.ThrowIfNullOrEmpty(format);
        return new DiskSource(new RawDisk(storage, storage.Path ?? $"{format} disk", format), null, storage.Length, owned: !leaveOpen);
    }

    /// <summary>Reads raw bytes from a seekable, readable stream; its length is the disk's size.</summary>
    public static DiskSource FromStream(Stream stream, bool leaveOpen = false) =>
        FromRaw(new StreamStorage(stream, leaveOpen), leaveOpen: false);

    /// <summary>"qcow2" or "raw", by the magic number. Takes no lock and refuses FIFOs and devices.</summary>
    public static string ProbeFormat(string path)
    {
        using var file = FileStorage.Open(path, new FileStorageOptions { Lock = FileLockRequest.None });
        Span<byte> magic = stackalloc byte[4];
        return file.Read(0, magic) == 4 && BinaryPrimitives.ReadUInt32BigEndian(magic) == Qcow2Layout.Magic ? "qcow2" : "raw";
    }

    /// <summary>Whether <paramref name="path"/> is this disk's file or any file it reads (backing, data file).</summary>
    public bool UsesFile(string path) =>
        _image?.UsesFile(path) ?? (Path is { } own && File.Exists(path) && File.Exists(own) && FileStorage.IsSameFile(own, path));

    /// <summary>Fills <paramref name="buffer"/> with guest bytes from <paramref name="offset"/>; zeros past <see cref="Size"/>.</summary>
    public void Read(long offset, Span<byte> buffer)
    {
        // The sync path of a chain read works on pooled memory, as Qcow2Image.Read does.
        var rented = System.Buffers.ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            SyncOver.Run(ReadAsync(offset, rented.AsMemory(0, buffer.Length), async: false, CancellationToken.None));
            rented.AsSpan(0, buffer.Length).CopyTo(buffer);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <inheritdoc cref="Read"/>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        ReadAsync(offset, buffer, async: true, cancellationToken);

    /// <summary>Block status of [offset, offset + length) through the chain; raw files report their holes as zeros.</summary>
    public IReadOnlyList<MapEntry> GetMap(long offset, long length)
    {
        var entries = new List<MapEntry>();
        SyncOver.Run(MapAsync(offset, length, entries, async: false, CancellationToken.None));
        return entries;
    }

    /// <inheritdoc cref="GetMap"/>
    public async ValueTask<IReadOnlyList<MapEntry>> GetMapAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        var entries = new List<MapEntry>();
        await MapAsync(offset, length, entries, async: true, cancellationToken).ConfigureAwait(false);
        return entries;
    }

    internal async ValueTask ReadAsync(long offset, Memory<byte> buffer, bool async, CancellationToken cancellationToken)
    {
        var inside = (int)Math.Clamp(Size - offset, 0, buffer.Length);
        if (inside > 0)
        {
            await _disk.ReadAsync(offset, buffer[..inside], async, cancellationToken).ConfigureAwait(false);
        }

        buffer.Span[inside..].Clear();
    }

    private async ValueTask MapAsync(long offset, long length, List<MapEntry> entries, bool async, CancellationToken cancellationToken)
    {
        if (_image is not null)
        {
            entries.AddRange(async ? await _image.GetMapAsync(offset, length, cancellationToken).ConfigureAwait(false) : _image.GetMap(offset, length));
            return;
        }

        var end = Math.Min(offset + length, Size);
        var fileEnd = Math.Min(end, _disk.Size);
        if (fileEnd > offset)
        {
            await _disk.MapAsync(offset, fileEnd - offset, 0, entries, async, cancellationToken).ConfigureAwait(false);
        }

        if (fileEnd < end)
        {
            // The rest of the last sector lies past the end of the raw file: QEMU reports it as zeros.
            entries.Add(new MapEntry(fileEnd, end - fileEnd, 0, Present: true, Zero: true, Data: false, fileEnd, Path));
        }

        Coalesce(entries);
    }

    /// <summary>Merges neighbours of a raw file's map that say the same (the file system reports extents piecewise).</summary>
    private static void Coalesce(List<MapEntry> entries)
    {
        for (var i = entries.Count - 1; i > 0; i--)
        {
            var (previous, current) = (entries[i - 1], entries[i]);
            if (previous.Data == current.Data && previous.End == current.Start)
            {
                entries[i - 1] = previous with { Length = previous.Length + current.Length };
                entries.RemoveAt(i);
            }
        }
    }

    /// <summary>Closes the image or file, unless the source was made with leaveOpen.</summary>
    public void Dispose()
    {
        if (_owned)
        {
            _disk.Dispose();
        }
    }

    /// <inheritdoc cref="Dispose"/>
    public async ValueTask DisposeAsync()
    {
        if (_owned)
        {
            if (_image is not null)
            {
                await _image.DisposeAsync().ConfigureAwait(false);
            }
            else
            {
                _disk.Dispose();
            }
        }
    }
}
