using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Writer;

/// <summary>
/// Drives one image and its model through random operations. Offsets concentrate on the places
/// writers get wrong: the first clusters, both sides of an L2 table boundary, the middle and the
/// end of the disk; lengths range from a few bytes to several clusters, aligned or not.
/// </summary>
public sealed class ModelRun
{
    private readonly ModelVariant _variant;
    private readonly Random _random;
    private readonly int _clusterSize;
    private readonly long _l2Coverage;
    private readonly bool _v2;
    private SparseModel? _backing;
    private long _backingSize;
    private readonly List<string> _log = [];
    private Qcow2Image _image = null!;

    public ModelRun(ModelVariant variant, string directory)
    {
        _variant = variant;
        _random = new Random(variant.Name.GetHashCode(StringComparison.Ordinal) ^ 0x5eed);
        _clusterSize = variant.Options.ClusterSize;
        var l2Entries = _clusterSize / (variant.Options.ExtendedL2 ? 16 : 8);
        _l2Coverage = (long)_clusterSize * l2Entries;
        _v2 = variant.Options.Version == 2;
        Directory = directory;
        ImagePath = Path.Combine(directory, "image.qcow2");
        var size = Math.Max(16L << 20, (2 * _l2Coverage) + (8L * _clusterSize));
        Model = new SparseModel(size);
    }

    public string Directory { get; }

    public string ImagePath { get; }

    public SparseModel Model { get; }

    public int Reopens { get; private set; }

    /// <summary>The last operations, newest last (printed when a check fails).</summary>
    public string RecentOperations => string.Join("\n", _log.TakeLast(15));

    public void Execute()
    {
        CreateImage();
        try
        {
            for (var i = 0; i < _variant.Operations; i++)
            {
                Step(i);
            }

            VerifyHotRegions();
        }
        finally
        {
            _image.Dispose();
        }
    }

    private void CreateImage()
    {
        string? backingName = null;
        if (_variant.Backing is { } format)
        {
            // The backing file is a little shorter than the overlay, so both sides of its end get exercised.
            _backingSize = Model.Size - (3L * _clusterSize) - 4096;
            _backing = new SparseModel(_backingSize);
            foreach (var (start, end) in HotRegions(_backingSize))
            {
                var bytes = new byte[end - start];
                _random.NextBytes(bytes);
                _backing.Write(start, bytes);
            }

            var raw = Path.Combine(Directory, "base.raw");
            _backing.WriteRaw(raw);
            backingName = "base.raw";
            if (format == "qcow2")
            {
                Qemu.Img("convert", "-f", "raw", "-O", "qcow2", raw, Path.Combine(Directory, "base.qcow2"));
                backingName = "base.qcow2";
            }

            Model.CopyFrom(_backing, 0, _backingSize);
        }

        var options = _variant.Options;
        _image = Qcow2Image.Create(ImagePath, new Qcow2CreateOptions
        {
            Size = Model.Size,
            Version = options.Version,
            ClusterSize = options.ClusterSize,
            RefcountBits = options.RefcountBits,
            LazyRefcounts = options.LazyRefcounts,
            ExtendedL2 = options.ExtendedL2,
            DataFile = options.DataFile,
            BackingFile = backingName,
            BackingFormat = _variant.Backing,
        });
    }

    private void Step(int index)
    {
        var choice = _random.Next(100);
        switch (choice)
        {
            case < 50:
                Write();
                break;
            case < 60:
                WriteZeroes();
                break;
            case < 70:
                Discard();
                break;
            case < 77:
                _log.Add("flush");
                Call(() => _image.Flush(), () => _image.FlushAsync());
                break;
            case < 80:
                Reopen();
                break;
            case < 83:
                Resize();
                break;
            default:
                VerifyRandomRange(index);
                break;
        }
    }

    private void Write()
    {
        var (offset, length) = PickRange();
        var data = new byte[length];
        switch (_random.Next(4))
        {
            case 0:
                Array.Fill(data, (byte)_random.Next(1, 256)); // compressible, repeated content
                break;
            case 1:
                break; // all zeros: exercises zero detection
            default:
                _random.NextBytes(data);
                break;
        }

        _log.Add($"write 0x{offset:x} +{length} ({(data.AsSpan().ContainsAnyExcept((byte)0) ? "data" : "zeros")})");
        Call(() => _image.Write(offset, data), () => _image.WriteAsync(offset, data));
        Model.Write(offset, data);
    }

    private void WriteZeroes()
    {
        var (offset, length) = PickRange();
        var unmap = _random.Next(2) == 0;
        _log.Add($"write-zeroes 0x{offset:x} +{length} unmap={unmap}");
        Call(() => _image.WriteZeroes(offset, length, unmap), () => _image.WriteZeroesAsync(offset, length, unmap));
        Model.Zero(offset, length);
    }

    private void Discard()
    {
        var (offset, length) = PickRange();
        _log.Add($"discard 0x{offset:x} +{length}");
        Call(() => _image.Discard(offset, length), () => _image.DiscardAsync(offset, length));
        var end = offset + length;
        var first = RoundUp(offset);
        var last = end == Model.Size ? RoundUp(end) : end / _clusterSize * _clusterSize;
        for (var cluster = first; cluster < last; cluster += _clusterSize)
        {
            var count = Math.Min(_clusterSize, Model.Size - cluster);
            Model.Zero(cluster, count);
            if (_v2 && _backing is not null && cluster < _backingSize)
            {
                // v2 cannot say "zero": a discarded cluster shows the backing file again, as in QEMU.
                Model.CopyFrom(_backing, cluster, Math.Min(count, _backingSize - cluster));
            }
        }
    }

    private void Reopen()
    {
        _log.Add("reopen");
        var options = new Qcow2OpenOptions { Writable = true };
        if (_variant.Async)
        {
            _image.DisposeAsync().AsTask().GetAwaiter().GetResult();
            _image = Qcow2Image.OpenAsync(ImagePath, options).AsTask().GetAwaiter().GetResult();
        }
        else
        {
            _image.Dispose();
            _image = Qcow2Image.Open(ImagePath, options);
        }

        Reopens++;
        _image.Size.ShouldBe(Model.Size);
        VerifyHotRegions();
    }

    private void Resize()
    {
        var delta = ((long)_random.Next(-6, 7) * _clusterSize) + (_random.Next(-8, 9) * 512L);
        var newSize = Math.Max(Model.Size + delta, (2 * _l2Coverage) + (4L * _clusterSize));
        newSize = newSize / 512 * 512;
        if (newSize == Model.Size)
        {
            return;
        }

        _log.Add($"resize {Model.Size} -> {newSize}");
        Call(() => _image.Resize(newSize, allowShrink: true), () => _image.ResizeAsync(newSize, allowShrink: true));
        Model.Resize(newSize);
    }

    private void VerifyRandomRange(int index)
    {
        var (offset, length) = PickRange();
        var actual = new byte[length];
        Call(() => _image.Read(offset, actual), () => _image.ReadAsync(offset, actual));
        var expected = Model.Read(offset, length);
        AssertSame(expected, actual, offset, $"random read after operation {index}");
    }

    private void VerifyHotRegions()
    {
        foreach (var (start, end) in HotRegions(Model.Size))
        {
            var actual = new byte[end - start];
            Call(() => _image.Read(start, actual), () => _image.ReadAsync(start, actual));
            AssertSame(Model.Read(start, (int)(end - start)), actual, start, $"after {Reopens} reopens");
        }
    }

    /// <summary>One image call through the synchronous or the asynchronous API, as the variant says.</summary>
    private void Call(Action sync, Func<ValueTask> async)
    {
        if (_variant.Async)
        {
            async().AsTask().GetAwaiter().GetResult();
        }
        else
        {
            sync();
        }
    }

    private void AssertSame(byte[] expected, byte[] actual, long offset, string when)
    {
        var same = actual.AsSpan().CommonPrefixLength(expected);
        if (same < expected.Length)
        {
            Assert.Fail($"Guest byte 0x{offset + same:x} reads 0x{actual[same]:x2} but the model says 0x{expected[same]:x2} ({when}). Recent operations:\n{RecentOperations}");
        }
    }

    private (long Offset, int Length) PickRange()
    {
        var regions = HotRegions(Model.Size);
        var (start, end) = regions[_random.Next(regions.Count)];
        var length = _random.Next(4) switch
        {
            0 => _random.Next(1, 600),
            1 => _clusterSize * _random.Next(1, 4),
            2 => Math.Min(256 * 1024, _clusterSize * 3) + _random.Next(0, 2000),
            _ => _random.Next(1, Math.Min(4 * _clusterSize, 300_000)),
        };
        length = (int)Math.Min(length, end - start);
        var offset = start + _random.NextInt64(0, end - start - length + 1);
        if (_random.Next(3) == 0)
        {
            offset = offset / _clusterSize * _clusterSize; // cluster aligned
            length = (int)Math.Min(length, end - offset);
        }

        return (offset, Math.Max(1, length));
    }

    private List<(long Start, long End)> HotRegions(long size)
    {
        var span = (4L * _clusterSize) + (64 * 1024);
        var regions = new List<(long, long)>
        {
            (0, Math.Min(size, span)),
            (Math.Max(0, _l2Coverage - span), Math.Min(size, _l2Coverage + span)),
            (size / 2 / 512 * 512, Math.Min(size, (size / 2 / 512 * 512) + span)),
            (Math.Max(0, size - span), size),
        };
        return regions.Where(r => r.Item2 > r.Item1).ToList();
    }

    private long RoundUp(long value) => (value + _clusterSize - 1) / _clusterSize * _clusterSize;
}
