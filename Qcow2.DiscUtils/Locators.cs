using DiscUtils;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>Files of a local directory, for DiscUtils (its own local locator is internal).</summary>
internal sealed class LocalLocator(string directory) : FileLocator
{
    private readonly string _directory = Path.GetFullPath(directory);

    public override bool Exists(string fileName) => File.Exists(GetFullPath(fileName));

    protected override Stream OpenFile(string fileName, FileMode mode, FileAccess access, FileShare share) =>
        new FileStream(GetFullPath(fileName), mode, access, share);

    public override FileLocator GetRelativeLocator(string path) => new LocalLocator(GetFullPath(path));

    public override string GetFullPath(string path) => Path.GetFullPath(Path.Combine(_directory, path));

    public override string GetDirectoryFromPath(string path) => Path.GetDirectoryName(path) ?? string.Empty;

    public override string GetFileFromPath(string path) => Path.GetFileName(path);

    public override DateTime GetLastWriteTimeUtc(string path) => File.GetLastWriteTimeUtc(GetFullPath(path));

    public override bool HasCommonRoot(FileLocator other) =>
        other is LocalLocator local && string.Equals(Path.GetPathRoot(local._directory), Path.GetPathRoot(_directory), StringComparison.OrdinalIgnoreCase);

    public override string ResolveRelativePath(string path) => GetFullPath(path);
}

/// <summary>Files inside a DiscUtils file system (paths use '\' as DiscUtils does).</summary>
internal sealed class FileSystemLocator(DiscFileSystem fileSystem, string basePath) : FileLocator
{
    private readonly string _basePath = basePath.TrimEnd('\\');

    public override bool Exists(string fileName) => fileSystem.FileExists(Combine(fileName));

    protected override Stream OpenFile(string fileName, FileMode mode, FileAccess access, FileShare share) =>
        fileSystem.OpenFile(Combine(fileName), mode, access);

    public override FileLocator GetRelativeLocator(string path) => new FileSystemLocator(fileSystem, Combine(path));

    public override string GetFullPath(string path) => Combine(path);

    public override string GetDirectoryFromPath(string path)
    {
        var split = path.LastIndexOf('\\');
        return split < 0 ? string.Empty : path[..split];
    }

    public override string GetFileFromPath(string path) => path[(path.LastIndexOf('\\') + 1)..];

    public override DateTime GetLastWriteTimeUtc(string path) => fileSystem.GetLastWriteTimeUtc(Combine(path));

    public override bool HasCommonRoot(FileLocator other) => other is FileSystemLocator locator && ReferenceEquals(locator.FileSystem, fileSystem);

    public override string ResolveRelativePath(string path) => Combine(path);

    private DiscFileSystem FileSystem => fileSystem;

    private string Combine(string path)
    {
        path = path.Replace('/', '\\');
        return path.StartsWith('\\') || _basePath.Length == 0 ? path.TrimStart('\\') : _basePath + "\\" + path;
    }
}
