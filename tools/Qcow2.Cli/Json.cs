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

        return Encoding.UTF8.GetString(stream.ToArray());
    }
}
