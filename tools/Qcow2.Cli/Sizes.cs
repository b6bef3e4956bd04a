using System.Buffers;
using System.Globalization;

namespace QcowDedup.Cli;

/// <summary>qemu-img's size syntax (k/M/G/T/P/E suffixes, powers of 1024) and its human formatting.</summary>
internal static class Sizes
{
    private static readonly string[] Suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    private static readonly SearchValues<char> HexDigits = SearchValues.Create("0123456789abcdefABCDEF");
    private static readonly SearchValues<char> DecimalDigitsAndPoint = SearchValues.Create("0123456789.");

    /// <summary>
    /// Reads qemu's size syntax (qemu_strtosz): "512", "0x200", "4k", "64M", "1.5G" — a decimal
    /// or hexadecimal number of bytes, or a decimal fraction with a unit, and an optional
    /// B/k/M/G/T/P/E suffix in powers of 1024. Sizes must fit a signed 64-bit byte count.
    /// </summary>
    public static SizeSyntax TryParse(string text, out long bytes)
    {
        ArgumentNullException.ThrowIfNull(text);
        bytes = 0;
        // Like strtoull: leading blanks and one plus sign are fine, anything after the unit is not.
        var trimmed = text.AsSpan().TrimStart();
        if (trimmed.StartsWith('+'))
        {
            trimmed = trimmed[1..];
        }

        if (trimmed.IsEmpty)
        {
            return SizeSyntax.Malformed;
        }

        if (trimmed.Length >= 2 && trimmed[0] == '0' && trimmed[1] is 'x' or 'X')
        {
            return TryParseHex(trimmed[2..], out bytes);
        }

        var shift = Shift(trimmed[^1]);
        var number = shift >= 0 ? trimmed[..^1] : trimmed;
        shift = Math.Max(shift, 0);
        if (!number.IsEmpty && !number.ContainsAnyExceptInRange('0', '9'))
        {
            return long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out var whole) ? Shifted(whole, shift, out bytes) : SizeSyntax.TooLarge;
        }

        // A fraction needs a unit and a leading digit: qemu refuses "1.5" and ".5k" but takes "1.5k" and "1.k".
        if (shift > 0 && !number.IsEmpty && char.IsAsciiDigit(number[0]) && number.Count('.') == 1 && !number.ContainsAnyExcept(DecimalDigitsAndPoint) &&
            double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var fraction))
        {
            var scaled = fraction * Math.Pow(2, shift);
            if (scaled >= long.MaxValue)
            {
                return SizeSyntax.TooLarge;
            }

            bytes = (long)scaled;
            return SizeSyntax.Valid;
        }

        return SizeSyntax.Malformed;
    }

    /// <summary>An image size argument (create SIZE, measure --size) with qemu-img's error wording.</summary>
    public static long ParseImageSize(string text) => TryParse(text, out var bytes) switch
    {
        SizeSyntax.Valid => bytes,
        SizeSyntax.TooLarge => throw new QemuArgumentError($"Invalid image size specified. Must be between 0 and {long.MaxValue}."),
        _ => throw new QemuArgumentError("Invalid image size specified. You may use k, M, G, T, P or E suffixes for\nqcow2: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."),
    };

    /// <summary>
    /// qemu-img's cvtnum: a byte count given to an option ("start offset", "granularity"), refused
    /// in its words when malformed or outside [0, <paramref name="max"/>].
    /// </summary>
    public static long Cvtnum(string name, string text, long max = long.MaxValue, long min = 0) => TryParse(text, out var bytes) switch
    {
        SizeSyntax.Valid when bytes >= min && bytes <= max => bytes,
        SizeSyntax.Valid or SizeSyntax.TooLarge => throw new QemuArgumentError($"Invalid {name} specified. Must be between {min} and {max}."),
        _ => throw new QemuArgumentError($"Invalid {name} specified. You may use k, M, G, T, P or E suffixes for\nqcow2: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."),
    };

    /// <summary>A size-valued option (-o size=…, -o cluster_size=…, resize's SIZE) with QEMU's option wording.</summary>
    public static long ParseParameter(string name, string text) => TryParse(text, out var bytes) switch
    {
        SizeSyntax.Valid => bytes,
        SizeSyntax.TooLarge => throw new QemuArgumentError($"Value '{text}' is out of range for parameter '{name}'"),
        _ => throw new QemuArgumentError($"Parameter '{name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."),
    };

    /// <summary>qemu's size_to_str: three significant digits and a binary unit ("3 MiB", "324 KiB").</summary>
    public static string Format(long value)
    {
        var scaled = value / (1000.0 / 1024.0);
        var exponent = scaled < 1 ? 0 : (int)Math.Floor(Math.Log2(scaled)) + 1;
        var index = Math.Clamp((exponent - 1) / 10, 0, Suffixes.Length - 1);
        var divided = value / Math.Pow(2, index * 10);
        return $"{FormatG3(divided)} {Suffixes[index]}B";
    }

    /// <summary>
    /// qemu reads hexadecimal digits as far as they go, so in "0x1E" the E is a digit; a unit
    /// (k, M, G, T, P) may follow the digits.
    /// </summary>
    private static SizeSyntax TryParseHex(ReadOnlySpan<char> text, out long bytes)
    {
        bytes = 0;
        var end = text.IndexOfAnyExcept(HexDigits);
        var digits = end < 0 ? text : text[..end];
        var unit = end < 0 ? [] : text[end..];
        var shift = unit.Length == 1 ? Shift(unit[0]) : unit.IsEmpty ? 0 : -1;
        if (digits.IsEmpty || shift < 0)
        {
            return SizeSyntax.Malformed;
        }

        return ulong.TryParse(digits, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var value) && value <= long.MaxValue
            ? Shifted((long)value, shift, out bytes)
            : SizeSyntax.TooLarge;
    }

    /// <summary>The power of two a unit letter stands for, or -1 for a character that is not a unit.</summary>
    private static int Shift(char unit) => char.ToUpperInvariant(unit) switch
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

    private static SizeSyntax Shifted(long value, int shift, out long bytes)
    {
        bytes = 0;
        if (value > long.MaxValue >> shift)
        {
            return SizeSyntax.TooLarge;
        }

        bytes = value << shift;
        return SizeSyntax.Valid;
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

/// <summary>What <see cref="Sizes.TryParse"/> made of a size.</summary>
internal enum SizeSyntax
{
    Valid,

    /// <summary>Not a size: no digits, a stray character, an unknown suffix, a sign.</summary>
    Malformed,

    /// <summary>A well-formed size of 8 EiB or more.</summary>
    TooLarge,
}
