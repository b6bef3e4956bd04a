using System.Runtime.InteropServices;

namespace QcowDedup.Qcow2.Compression;

/// <summary>Loads a native library by its usual names on each platform.</summary>
internal static class NativeLibraryLoader
{
    /// <summary>Loads the first of <paramref name="candidates"/> that loads; false when none does.</summary>
    public static bool TryLoad(out nint handle, params string[] candidates)
    {
        foreach (var name in candidates)
        {
            if (NativeLibrary.TryLoad(name, out handle))
            {
                return true;
            }
        }

        handle = 0;
        return false;
    }

    public static nint Export(nint library, string name) => NativeLibrary.GetExport(library, name);
}
