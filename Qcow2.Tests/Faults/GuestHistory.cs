using System.Security.Cryptography;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Faults;

/// <summary>
/// Which bytes each guest sector may hold after a crash: what it held at the last completed
/// flush, or any value it was given since (a crash keeps any subset of unflushed writes, and two
/// writes into one sector may survive one without the other, so the check is per byte). Anything
/// else is data loss, or — when the bytes are those of another sector — misplaced data.
/// </summary>
public sealed class GuestHistory
{
    public const int SectorSize = 512;
    private readonly Dictionary<long, List<byte[]>> _since = [];
    private readonly Dictionary<UInt128, long> _writtenAt = [];
    private SparseModel _current;
    private SparseModel _flushed;

    /// <param name="initial">The disk as it is durably at the start (read from the pristine image).</param>
    public GuestHistory(SparseModel initial)
    {
        _current = initial.Clone();
        _flushed = initial;
    }

    public long Size => _current.Size;

    /// <summary>What the disk reads now, as far as the workload knows.</summary>
    public SparseModel Current => _current;

    /// <summary>An operation is about to give [offset, offset + data.Length) these bytes: allowed from now on, even if the call fails.</summary>
    public void Expect(long offset, ReadOnlySpan<byte> data)
    {
        var model = _current.Clone();
        model.Write(offset, data.ToArray());
        Allow(model, offset, data.Length);
    }

    /// <summary>The disk grew to <paramref name="size"/>: the new part reads as zeros.</summary>
    public void Grow(long size)
    {
        if (size > _current.Size)
        {
            _current.Resize(size);
            _flushed.Resize(Math.Max(_flushed.Size, size)); // beyond the old end a crash leaves zeros or nothing
        }
    }

    /// <summary>After a successful operation: the range now reads <paramref name="observed"/>.</summary>
    public void Observed(long offset, ReadOnlySpan<byte> observed)
    {
        _current.Write(offset, observed.ToArray());
        Allow(_current, offset, observed.Length);
    }

    /// <summary>A flush completed: everything the disk reads now must survive any crash.</summary>
    public void Flushed()
    {
        _flushed = _current.Clone();
        _since.Clear();
    }

    /// <summary>Null when <paramref name="disk"/> holds only allowed bytes, else where and how it differs.</summary>
    public string? Verify(ReadOnlySpan<byte> disk)
    {
        var sector = new byte[SectorSize];
        var flushed = new byte[SectorSize];
        for (long start = 0; start < disk.Length; start += SectorSize)
        {
            var length = (int)Math.Min(SectorSize, disk.Length - start);
            var actual = disk.Slice((int)start, length);
            _flushed.Read(start, flushed.AsSpan(0, length));
            if (actual.SequenceEqual(flushed.AsSpan(0, length)))
            {
                continue;
            }

            var versions = _since.GetValueOrDefault(start / SectorSize) ?? [];
            for (var i = 0; i < length; i++)
            {
                var value = actual[i];
                var index = i;
                if (value != flushed[i] && !versions.Any(v => v[index] == value))
                {
                    actual.CopyTo(sector);
                    var source = _writtenAt.TryGetValue(Key(sector.AsSpan(0, length)), out var at) && at != start / SectorSize
                        ? $"MISPLACED: it holds bytes written to guest sector {at} (offset 0x{at * SectorSize:x})"
                        : "lost or garbage";
                    return $"guest offset 0x{start + i:x}: reads 0x{actual[i]:x2}, flushed 0x{flushed[i]:x2}, {versions.Count} later values allowed; {source}";
                }
            }
        }

        return null;
    }

    private void Allow(SparseModel model, long offset, long length)
    {
        if (length <= 0)
        {
            return;
        }

        for (var sector = offset / SectorSize; sector <= (offset + length - 1) / SectorSize; sector++)
        {
            var bytes = new byte[SectorSize];
            model.Read(sector * SectorSize, bytes);
            if (!_since.TryGetValue(sector, out var list))
            {
                _since[sector] = list = [];
            }

            list.Add(bytes);
            if (bytes.AsSpan().ContainsAnyExcept((byte)0))
            {
                _writtenAt.TryAdd(Key(bytes), sector);
            }
        }
    }

    private static UInt128 Key(ReadOnlySpan<byte> bytes)
    {
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(bytes, hash);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt128LittleEndian(hash);
    }
}
