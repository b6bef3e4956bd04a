using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// Checks the file names of a command line before the library opens or creates them, so a
/// missing file, a directory or a missing parent directory is reported in qemu-img's words
/// rather than .NET's ("Could not find file …", "Access to the path … is denied").
/// </summary>
internal static class FileArguments
{
    /// <summary>An image or raw file to read or modify.</summary>
    /// <exception cref="FileNotFoundException">There is no such file.</exception>
    /// <exception cref="IOException">The name is a directory.</exception>
    public static void CheckInput(string path)
    {
        if (path.Length == 0)
        {
            throw new FileNotFoundException("Could not open '': The 'file' block driver requires a file name", path);
        }

        if (Directory.Exists(path))
        {
            throw new IOException($"Could not open '{path}': 'file' driver requires '{path}' to be a regular file");
        }

        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Could not open '{path}': Could not open '{path}': No such file or directory", path);
        }
    }

    /// <summary>A file to create or overwrite.</summary>
    /// <exception cref="IOException">The name is empty, a directory, or in a directory that does not exist.</exception>
    public static void CheckOutput(string path)
    {
        var reason = path.Length == 0 ? "The 'file' block driver requires a file name"
            : Directory.Exists(path) ? "Is a directory"
            : Path.GetDirectoryName(Path.GetFullPath(path)) is { } parent && !Directory.Exists(parent) ? "No such file or directory"
            : null;
        if (reason is not null)
        {
            throw new IOException($"Could not create '{path}': {reason}");
        }
    }

    /// <summary>Opens a qcow2 image named on the command line.</summary>
    public static Qcow2Image OpenImage(string path, Qcow2OpenOptions options)
    {
        CheckInput(path);
        return Qcow2Image.Open(path, options);
    }
}
