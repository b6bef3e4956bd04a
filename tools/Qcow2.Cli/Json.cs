using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace QcowDedup.Cli;

/// <summary>JSON output laid out like qemu-img's (four-space indentation).</summary>
internal static class Json
{
    public static string Write(Action<Utf8JsonWriter> body)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, IndentSize = 4, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            body(writer);
        }

        return EmptyArraysAsQemu(Encoding.UTF8.GetString(stream.ToArray()));
    }

    /// <summary>
    /// QEMU's pretty printer opens an empty list on one line and closes it on the next, at the
    /// line's indentation ("flags": [ … ]); System.Text.Json writes "[]". A "[]" inside a string
    /// value ends its line with a quote, so it is never touched.
    /// </summary>
    private static string EmptyArraysAsQemu(string json)
    {
        if (!json.Contains("[]", StringComparison.Ordinal))
        {
            return json;
        }

        var lines = json.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            var comma = line.EndsWith("[],", StringComparison.Ordinal) ? "," : string.Empty;
            if (line.EndsWith("[]" + comma, StringComparison.Ordinal))
            {
                var indent = line[..(line.Length - line.TrimStart().Length)];
                lines[i] = $"{line[..(line.Length - 2 - comma.Length)]}[\n{indent}]{comma}";
            }
        }

        return string.Join('\n', lines);
    }
}
