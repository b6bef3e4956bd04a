using System.Globalization;
using System.Text;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 map [-f FMT] [--output human|json] FILE</summary>
internal static class MapCommand
{
    public const string Usage = "qcow2 map [-f FMT] [--output human|json] [--start-offset OFFSET] [--max-length LENGTH] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "--output", "--start-offset", "--max-length"], ["-U", "--force-share"], ImageArguments.First);
        var start = line.Value("--start-offset") is { } startText ? Sizes.Cvtnum("start offset", startText) : 0;
        var maxLength = line.Value("--max-length") is { } lengthText ? Sizes.Cvtnum("max length", lengthText) : -1;
        line.ExpectPositionals(1, 1, Usage);
        var json = OutputMode.IsJson(line.Value("--output"));
        using var source = Disks.Open(line.Positionals[0], line.Value("-f"), ImageOptions.For(line, line.Positionals[0]));
        var end = maxLength < 0 ? source.Size : Math.Min(unchecked(start + maxLength), source.Size); // qemu-img's sum wraps too: then nothing is mapped
        var entries = start < end ? source.GetMap(start, end - start) : [];
        if (json)
        {
            // As qemu-img, an empty range still prints its one (empty) entry.
            Console.Out.WriteLine("[" + string.Join(",\n", entries.Count > 0 ? entries.Select(JsonLine) : [JsonLine(new MapEntry(start, 0, 0, false, false, false, null, null))]) + "]");
            return 0;
        }

        return PrintHuman(entries, Path.IsPathRooted(line.Positionals[0]));
    }

    /// <summary>One entry in qemu-img's compact JSON form.</summary>
    public static string JsonLine(MapEntry e)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"{{ \"start\": {e.Start}, \"length\": {e.Length}, \"depth\": {e.Depth}, \"present\": {Bool(e.Present)}, \"zero\": {Bool(e.Zero)}, \"data\": {Bool(e.Data)}");
        if (e.Offset is long offset)
        {
            text.Append(CultureInfo.InvariantCulture, $", \"offset\": {offset}");
        }

        return text.Append('}').ToString();
    }

    private static int PrintHuman(IReadOnlyList<MapEntry> entries, bool absolute)
    {
        var output = new StringBuilder();
        output.Append(CultureInfo.InvariantCulture, $"{"Offset",-16}{"Length",-16}{"Mapped to",-16}File\n");
        foreach (var entry in entries.Where(e => e.Data))
        {
            if (entry.Offset is not long offset)
            {
                Console.Out.Write(output.ToString());
                Console.Error.WriteLine("qcow2: File contains external, encrypted or compressed clusters.");
                return 1;
            }

            output.Append(CultureInfo.InvariantCulture, $"{Hex(entry.Start),-16}{Hex(entry.Length),-16}{Hex(offset),-16}{DisplayName(entry.File, absolute)}\n");
        }

        Console.Out.Write(output.ToString());
        return 0;
    }

    /// <summary>qemu-img names files the way the image was named: relative names stay relative.</summary>
    private static string? DisplayName(string? file, bool absolute) =>
        file is null || absolute ? file : Path.GetRelativePath(Environment.CurrentDirectory, file);

    private static string Hex(long value) => value == 0 ? "0" : $"0x{value:x}";

    private static string Bool(bool value) => value ? "true" : "false";
}
