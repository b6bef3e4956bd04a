using System.Buffers.Binary;
using QcowDedup.Qcow2.Dedup.Format;

namespace QcowDedup.Qcow2.Tests.Fuzzing;

/// <summary>A mutated image: its bytes, the length its file claims, and what was changed.</summary>
internal sealed record FuzzInput(string Seed, byte[] Image, long Length, IReadOnlyList<string> Mutations);

/// <summary>
/// Structure-aware mutations: one to three per case, each aimed at a structure of the seed
/// (<see cref="ImageLayout"/>) with values that break parsers — zero, one, all ones, the sign
/// bit, offsets at, just past and far past the end of the file, unaligned offsets, offsets of
/// other metadata, flipped flag and reserved bits. Now and then the file is truncated, or made to
/// claim a huge sparse length, or hit by random bytes anywhere.
/// </summary>
internal sealed class Mutator(Random random)
{
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    private static readonly long[] HugeLengths = [200L << 40, 1L << 46, (1L << 50) + 65536, long.MaxValue / 2, 1L << 34];

    public FuzzInput Mutate(FuzzSeed seed, ImageLayout layout)
    {
        var image = (byte[])seed.Image.Clone();
        long length = image.Length;
        var done = new List<string>();
        var count = 1 + (random.Next(4) == 0 ? random.Next(3) : 0);
        for (var i = 0; i < count; i++)
        {
            var roll = random.Next(100);
            if (roll < 3)
            {
                length = HugeLengths[random.Next(HugeLengths.Length)];
                done.Add($"sparse length {length}");
            }
            else if (roll < 6)
            {
                length = Math.Min(length, TruncatePoint(image.Length, layout));
                done.Add($"truncate to {length}");
            }
            else if (roll < 9)
            {
                var at = random.Next(Math.Min(image.Length, 4 * layout.ClusterSize));
                image[at] = (byte)random.Next(256);
                done.Add($"byte 0x{at:x} = 0x{image[at]:x2}");
            }
            else
            {
                var group = layout.Groups[random.Next(layout.Groups.Count)];
                var targets = layout.Targets.Where(t => t.Group == group).ToList();
                var target = targets[random.Next(targets.Count)];
                done.Add(Apply(image, layout, target));
            }
        }

        if (layout.DedupPayload is { } dedup && dedup.Offset + dedup.Length <= image.Length && done.Any(d => d.StartsWith("dedup header +", StringComparison.Ordinal)))
        {
            var span = image.AsSpan((int)dedup.Offset, dedup.Length);
            BinaryPrimitives.WriteUInt32BigEndian(span[^4..], Crc32C.Compute(span[..^4]));
        }

        return new FuzzInput(seed.Name, image, length, done);
    }

    private long TruncatePoint(long length, ImageLayout layout) => random.Next(3) switch
    {
        0 => random.NextInt64(length),
        1 => layout.MetadataOffsets[random.Next(layout.MetadataOffsets.Count)] + random.Next(16),
        _ => Math.Max(0, length - layout.ClusterSize + random.Next(-64, 64)),
    };

    private string Apply(byte[] image, ImageLayout layout, Target target)
    {
        if (target.Offset < 0 || target.Offset + Math.Min(target.Width, 8) > image.Length)
        {
            return $"{target.Name}: outside the file, skipped";
        }

        switch (target.Kind)
        {
            case TargetKind.Field:
            case TargetKind.DedupField:
            {
                var old = Read(image, target.Offset, target.Width);
                var value = FieldValue(old, target.Width, image.Length, layout);
                Write(image, target.Offset, target.Width, value);
                return $"{target.Name} 0x{old:x} -> 0x{value:x}";
            }

            case TargetKind.Entry:
            {
                var old = Read(image, target.Offset, 8);
                var value = EntryValue(old, image.Length, layout);
                Write(image, target.Offset, 8, value);
                return $"{target.Name} 0x{old:x} -> 0x{value:x}";
            }

            case TargetKind.RefcountBlock:
            {
                var bits = 1 << layout.RefcountOrder;
                var entries = target.Width * 8 / bits;
                var index = random.Next(4) == 0 ? random.Next(entries) : random.Next(Math.Min(entries, 64));
                var max = bits == 64 ? ulong.MaxValue : (1UL << bits) - 1;
                var value = random.Next(5) switch
                {
                    0 => 0UL,
                    1 => max,
                    2 => 1UL,
                    3 => Math.Max(max, 1) - 1,
                    _ => (ulong)random.NextInt64() & max,
                };
                SetRefcount(image, target.Offset, index, bits, value);
                return $"{target.Name} entry {index} = 0x{value:x}";
            }

            default:
            {
                var width = Math.Min(target.Width, image.Length - (int)target.Offset);
                var at = target.Offset + random.Next(Math.Max(width, 1));
                var value = random.Next(4) switch { 0 => 0, 1 => 0xff, 2 => (byte)'/', _ => random.Next(256) };
                image[at] = (byte)value;
                return $"{target.Name} byte 0x{at:x} = 0x{value:x2}";
            }
        }
    }

    private ulong FieldValue(ulong old, int width, long fileLength, ImageLayout layout)
    {
        var mask = width == 8 ? ulong.MaxValue : (1UL << (width * 8)) - 1;
        var cluster = (ulong)layout.ClusterSize;
        ulong value = random.Next(16) switch
        {
            0 => 0,
            1 => 1,
            2 => mask,
            3 => mask >> 1,
            4 => (mask >> 1) + 1,
            5 => old + 1,
            6 => old - 1,
            7 => old * 2,
            8 => old ^ (1UL << random.Next(width * 8)),
            9 => (ulong)fileLength,
            10 => (ulong)fileLength + cluster,
            11 => (ulong)layout.MetadataOffsets[random.Next(layout.MetadataOffsets.Count)],
            12 => old | 0xff00_0000_0000_0000,
            13 => (ulong)random.Next(1, 64),
            14 => old + (cluster / 2),
            _ => (ulong)random.NextInt64(long.MinValue, long.MaxValue),
        };
        return value & mask;
    }

    private ulong EntryValue(ulong old, long fileLength, ImageLayout layout)
    {
        var cluster = (ulong)layout.ClusterSize;
        var flags = old & ~OffsetMask;
        return random.Next(14) switch
        {
            0 => 0,
            1 => old ^ (1UL << 63), // COPIED
            2 => old ^ (1UL << 62), // compressed
            3 => old ^ 1, // zero flag
            4 => old | (1UL << (56 + random.Next(6))), // reserved high bits
            5 => old | (1UL << (1 + random.Next(8))), // reserved low bits
            6 => flags | ((ulong)fileLength & OffsetMask),
            7 => flags | (((ulong)fileLength + (cluster * (ulong)random.Next(1, 1000))) & OffsetMask),
            8 => flags | ((ulong)layout.MetadataOffsets[random.Next(layout.MetadataOffsets.Count)] & OffsetMask),
            9 => old + 512,
            10 => flags | OffsetMask,
            11 => old | 0xffff_0000_0000_0000,
            12 => (ulong)random.NextInt64(long.MinValue, long.MaxValue),
            _ => old ^ (1UL << random.Next(64)),
        };
    }

    private static void SetRefcount(byte[] image, long block, int index, int bits, ulong value)
    {
        if (bits >= 8)
        {
            Write(image, block + ((long)index * (bits / 8)), bits / 8, value);
            return;
        }

        var at = block + (index * bits / 8);
        var shift = index * bits % 8;
        var mask = (byte)(((1 << bits) - 1) << shift);
        image[at] = (byte)((image[at] & ~mask) | (((int)value << shift) & mask));
    }

    private static ulong Read(byte[] image, long offset, int width)
    {
        ulong value = 0;
        for (var i = 0; i < width; i++)
        {
            value = (value << 8) | image[offset + i];
        }

        return value;
    }

    private static void Write(byte[] image, long offset, int width, ulong value)
    {
        for (var i = width - 1; i >= 0; i--)
        {
            image[offset + i] = (byte)value;
            value >>= 8;
        }
    }
}
