using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Compression;

/// <summary>Loads a system library by its usual names on each platform, once.</summary>
internal static class NativeLibraryLoader
{
    public static nint Load(string description, string package, params string[] candidates)
    {
        foreach (var name in candidates)
        {
            if (NativeLibrary.TryLoad(name, out var handle))
            {
                return handle;
            }
        }

        throw new NotSupportedException(
            $"{description} needs the system library {candidates[0]} ({package}), which could not be loaded. Install it and try again.");
    }

    public static nint Export(nint library, string name) => NativeLibrary.GetExport(library, name);
}
