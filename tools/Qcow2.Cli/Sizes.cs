using System.Globalization;

namespace QcowDedup.Cli;

/// <summary>qemu-img's size syntax (k/M/G/T/P/E suffixes, powers of 1024) and its human formatting.</summary>
internal static class Sizes
{
    private static readonly string[] Suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

    /// <summary>Parses "64M", "1.5G", "512", "4k" (bytes without a suffix, like qemu-img).</summary>
    public static long Parse(string text, string what = "size")
    {
        ArgumentNullException.ThrowIfNull(text);
        var trimmed = text.Trim();
        if (trimmed.Length == 0)
        {
            throw new UsageException($"{what} is empty");
        }

        var unit = char.ToUpperInvariant(trimmed[^1]);
        var shift = unit switch
        {
            'B' => 0,
            'K' => 10,
            'M' => 20,
            'G' => 30,
            'T' => 40,
            'P' => 50,
            'E' => 60,
            _ => -1,
        };
        var number = shift >= 0 ? trimmed[..^1] : trimmed;
        shift = Math.Max(shift, 0);
        if (long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out var whole))
        {
            if (whole > long.MaxValue >> shift)
            {
                throw new UsageException($"{what} '{text}' is too large");
            }

            return whole << shift;
        }

        if (double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var fraction) && shift > 0)
        {
            var bytes = fraction * Math.Pow(2, shift);
            if (bytes >= long.MaxValue)
            {
                throw new UsageException($"{what} '{text}' is too large");
            }

            return (long)bytes;
        }

        throw new UsageException($"invalid {what} '{text}': use a number with an optional k, M, G, T, P or E suffix");
    }

    /// <summary>qemu's size_to_str: three significant digits and a binary unit ("3 MiB", "324 KiB").</summary>
    public static string Format(long value)
    {
        var scaled = value / (1000.0 / 1024.0);
        var exponent = scaled < 1 ? 0 : (int)Math.Floor(Math.Log2(scaled)) + 1;
        var index = Math.Clamp((exponent - 1) / 10, 0, Suffixes.Length - 1);
        var divided = value / Math.Pow(2, index * 10);
        return $"{FormatG3(divided)} {Suffixes[index]}B";
    }

    private static string FormatG3(double value)
    {
        if (value == 0)
        {
            return "0";
        }

        var digits = (int)Math.Floor(Math.Log10(Math.Abs(value))) + 1;
        var decimals = Math.Clamp(3 - digits, 0, 2);
        var rounded = Math.Round(value, decimals, MidpointRounding.ToEven);
        return rounded.ToString("0.##", CultureInfo.InvariantCulture);
    }
}
