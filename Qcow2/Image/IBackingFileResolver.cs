using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>What an image refers to by name.</summary>
public enum FileReferenceKind
{
    /// <summary>A backing file named in the header.</summary>
    BackingFile,

    /// <summary>An external data file named in the "DATA" extension.</summary>
    ExternalDataFile,
}

/// <summary>A file named by an image that must be opened.</summary>
/// <param name="Name">The name exactly as stored in the image.</param>
/// <param name="Kind">What the file is for.</param>
/// <param name="ReferrerPath">Full path of the image that names it, when it has one.</param>
/// <param name="Writable">Whether the file must be opened for writing.</param>
public sealed record FileReference(string Name, FileReferenceKind Kind, string? ReferrerPath, bool Writable)
{
    /// <summary>Whether the image's <see cref="BackingFilePolicy"/> lets this reference open a device, FIFO or socket.</summary>
    public bool AllowNonRegularFile { get; init; }
}

/// <summary>
/// Opens the backing files and external data files an image names. Replace it to serve images
/// from somewhere other than the local file system, or to redirect names.
/// </summary>
public interface IBackingFileResolver
{
    /// <summary>Opens the file for <paramref name="reference"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    IStorage Open(FileReference reference);
}

/// <summary>
/// Resolves names as QEMU does: absolute names as they are, relative backing file names against
/// the directory of the image that names them. Relative data file names are tried there first
/// and then, as QEMU opens them, against the current directory.
/// </summary>
public sealed class DefaultBackingFileResolver : IBackingFileResolver
{
    /// <summary>The shared instance.</summary>
    public static DefaultBackingFileResolver Instance { get; } = new();

    /// <summary>The full path a name refers to.</summary>
    /// <exception cref="NotSupportedException">The name uses a QEMU protocol prefix (json:, nbd://…).</exception>
    public static string ResolvePath(string name, string? referrerPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name.StartsWith("json:", StringComparison.Ordinal) || name.Contains("://", StringComparison.Ordinal))
        {
            throw new NotSupportedException($"The file name '{name}' uses a QEMU protocol; only local files are supported.");
        }

        if (name.Contains('\0', StringComparison.Ordinal))
        {
            // .NET would say only "Null character in path.", without saying which name or whose.
            var of = referrerPath is null ? string.Empty : $" named by {referrerPath}";
            throw new ArgumentException($"The file name '{name}'{of} contains a NUL character, which no file name can hold.", nameof(name));
        }

        if (Path.IsPathRooted(name))
        {
            return FilePaths.Absolute(name);
        }

        var directory = referrerPath is null ? Environment.CurrentDirectory : Path.GetDirectoryName(FilePaths.Absolute(referrerPath))!;
        return FilePaths.Absolute(Path.Combine(directory, name)); // as QEMU's path_combine: the kernel resolves '..'
    }

    /// <summary>The full path a name refers to, or null when it is not a local file name (a QEMU protocol).</summary>
    public static string? TryResolvePath(string name, string? referrerPath)
    {
        try
        {
            return ResolvePath(name, referrerPath);
        }
        catch (Exception error) when (error is NotSupportedException or ArgumentException)
        {
            return null;
        }
    }

    /// <inheritdoc />
    public IStorage Open(FileReference reference)
    {
        ArgumentNullException.ThrowIfNull(reference);
        var path = ResolvePath(reference.Name, reference.ReferrerPath);
        if (!File.Exists(path) && reference.Kind == FileReferenceKind.ExternalDataFile && !Path.IsPathRooted(reference.Name))
        {
            // QEMU opens a relative data file name against its current directory, not the image's.
            path = ResolvePath(reference.Name, referrerPath: null);
        }

        if (Directory.Exists(path))
        {
            throw FileOpener.NotRegular(path, FileType.Directory); // not "does not exist": it does, as a directory
        }

        if (!File.Exists(path))
        {
            var what = reference.Kind == FileReferenceKind.BackingFile ? "backing file" : "external data file";
            var of = reference.ReferrerPath is null ? string.Empty : $" of {reference.ReferrerPath}";
            throw new FileNotFoundException($"Could not open the {what} '{reference.Name}'{of}: {path} does not exist.", path);
        }

        return FileStorage.Open(path, new FileStorageOptions { Writable = reference.Writable, AllowNonRegularFile = reference.AllowNonRegularFile });
    }
}
