namespace QcowDedup.Qcow2.Storage;

/// <summary>Absolute paths that name the file the kernel would open, as QEMU and the shell do.</summary>
public static class FilePaths
{
    /// <summary>
    /// The absolute form of <paramref name="path"/> naming the same file. "." and repeated
    /// separators go, but on Unix ".." stays wherever it appears: after a symbolic link to a
    /// directory it leads to the parent of the link's target, which removing it by name
    /// (<see cref="Path.GetFullPath(string)"/>) would not — a different file than qemu-img or the
    /// shell would open. Windows resolves ".." by name itself, so there the full path is exact.
    /// </summary>
    public static string Absolute(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (OperatingSystem.IsWindows() || !path.Split('/').Contains(".."))
        {
            return Path.GetFullPath(path);
        }

        return Path.IsPathRooted(path) ? path : Path.Join(Environment.CurrentDirectory, path);
    }
}
