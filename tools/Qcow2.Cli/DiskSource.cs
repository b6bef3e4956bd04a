using System.Buffers.Binary;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Cli;

/// <summary>An input disk of a verb: a qcow2 image or a raw file, chosen by -f or by the magic number.</summary>
internal sealed class DiskSource : IDisposable
{
    private readonly Qcow2Image? _image;
    private readonly FileStorage? _raw;

    private DiskSource(string path, Qcow2Image image)
    {
        Path = path;
        _image = image;
        Format = "qcow2";
        Size = image.Size;
    }

    private DiskSource(string path, FileStorage raw)
    {
        Path = path;
        _raw = raw;
        Format = "raw";
        Size = (raw.Length + 511) / 512 * 512; // QEMU's raw driver rounds the size up to whole sectors
    }

    public string Path { get; }

    public string Format { get; }

    public long Size { get; }

    public Qcow2Image? Image => _image;

    /// <summary>Opens a disk to read, locked as qemu-img locks its sources: nobody may write or resize it meanwhile, unless force-shared.</summary>
    public static DiskSource Open(string path, string? format, Qcow2OpenOptions options)
    {
        FileArguments.CheckInput(path);

        format ??= Probe(path);
        switch (format)
        {
            case "qcow2":
                return new DiskSource(path, Qcow2Image.Open(path, options));
            case "raw":
                var request = options.ForceShare ? FileLockRequest.ForceShared : FileLockRequest.Image(writable: false);
                return new DiskSource(path, FileStorage.Open(path, new FileStorageOptions { Lock = request, Locking = options.Locking }));
            default:
                throw new UsageException($"unknown or unsupported format '{format}' (use qcow2 or raw)");
        }
    }

    /// <summary>qcow2 or raw, by the magic number. Opens without blocking and refuses FIFOs and devices, takes no lock.</summary>
    public static string Probe(string path)
    {
        using var file = FileStorage.Open(path, new FileStorageOptions { Lock = FileLockRequest.None });
        Span<byte> magic = stackalloc byte[4];
        return file.Read(0, magic) == 4 && BinaryPrimitives.ReadUInt32BigEndian(magic) == Qcow2Layout.Magic ? "qcow2" : "raw";
    }

    /// <summary>Whether <paramref name="path"/> is this disk's file or any file it reads (backing, data file).</summary>
    public bool UsesFile(string path) => _image?.UsesFile(path) ?? (File.Exists(path) && FileStorage.IsSameFile(Path, path));

    public void Read(long offset, Span<byte> buffer)
    {
        if (_image is not null)
        {
            _image.Read(offset, buffer);
            return;
        }

        var read = _raw!.Read(offset, buffer);
        buffer[read..].Clear();
    }

    /// <summary>Block status of [offset, offset + length) through the chain; raw files report holes.</summary>
    public IReadOnlyList<MapEntry> Map(long offset, long length)
    {
        if (_image is not null)
        {
            return _image.GetMap(offset, length);
        }

        var entries = new List<MapEntry>();
        var position = offset;
        var end = offset + length;
        var fileLength = _raw!.Length;
        while (position < end)
        {
            bool isData;
            long extentEnd;
            if (position >= fileLength)
            {
                // The rest of the last sector lies past the end of the file: QEMU reports it as zeros.
                (isData, extentEnd) = (false, end);
            }
            else if (!_raw.TryGetDataExtent(position, out isData, out extentEnd) || extentEnd <= position)
            {
                isData = true;
                extentEnd = end;
            }

            var next = Math.Min(end, extentEnd);
            if (entries.Count > 0 && entries[^1] is var last && last.Data == isData && last.End == position)
            {
                entries[^1] = last with { Length = next - last.Start };
            }
            else
            {
                entries.Add(new MapEntry(position, next - position, 0, true, !isData, isData, position, Path));
            }

            position = next;
        }

        return entries;
    }

    public void Dispose()
    {
        _image?.Dispose();
        _raw?.Dispose();
    }
}
