using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// Where optional features hook into the verbs that create images: extra -o keys and how an image
/// with them is created.
/// </summary>
internal static class Extensions
{
    /// <summary>-o keys beyond qemu-img's.</summary>
    public static IReadOnlyList<string> CreateOptionKeys { get; } = [];

    /// <summary>Creates an image honouring core and extension options.</summary>
    public static Qcow2Image Create(string path, Qcow2CreateOptions options, CreateOptionParser parser)
    {
        _ = parser;
        return Qcow2Image.Create(path, options);
    }
}
