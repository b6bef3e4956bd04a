using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// Which files an image may open on its own: the backing files and external data files its
/// header names. An image is data, and an image from elsewhere may name any path — /etc/shadow
/// as a raw backing file, a FIFO that blocks forever, a device. The default follows QEMU (any
/// regular file, since tools such as libvirt write absolute paths); a host that opens images
/// it did not make can confine them to a directory tree, forbid implicit files, or decide per
/// file. Devices, FIFOs and sockets are refused under every policy unless
/// <see cref="AllowNonRegularFiles"/> is set.
/// </summary>
public sealed class BackingFilePolicy
{
    private readonly Func<FileReference, string, bool>? _allow;
    private readonly string? _root;

    private BackingFilePolicy(string description, Func<FileReference, string, bool>? allow, string? root, bool allowNonRegular)
    {
        Description = description;
        _allow = allow;
        _root = root;
        AllowNonRegularFiles = allowNonRegular;
    }

    /// <summary>Any regular file, wherever it is (QEMU's behaviour; the default).</summary>
    public static BackingFilePolicy AnyRegularFile { get; } = new("any regular file", null, null, allowNonRegular: false);

    /// <summary>No implicit files: opening an image that names a backing or data file fails (unless backing files are ignored).</summary>
    public static BackingFilePolicy None { get; } = new("no backing or data files", (_, _) => false, null, allowNonRegular: false);

    /// <summary>What the policy allows, for messages.</summary>
    public string Description { get; }

    /// <summary>Whether devices, FIFOs and sockets may be opened.</summary>
    public bool AllowNonRegularFiles { get; }

    /// <summary>
    /// Only files inside <paramref name="directory"/> and its subdirectories, judged by where a
    /// name really leads once ".." and every symbolic link are resolved — a link inside the tree
    /// that points out of it is refused.
    /// </summary>
    /// <param name="directory">The tree's root.</param>
    public static BackingFilePolicy ConfinedTo(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        var full = Path.GetFullPath(directory);
        var real = OperatingSystem.IsWindows() ? full : Posix.RealPath(full) ?? full;
        return new($"files under {full}", null, Path.TrimEndingDirectorySeparator(real), allowNonRegular: false);
    }

    /// <summary>
    /// Files for which <paramref name="allow"/> returns true, given the reference and the full path
    /// it leads to (symbolic links and ".." resolved where the file exists).
    /// </summary>
    /// <param name="allow">The decision; called before the file is opened.</param>
    /// <param name="description">What the predicate allows, for messages.</param>
    public static BackingFilePolicy Where(Func<FileReference, string, bool> allow, string description = "files the caller allows")
    {
        ArgumentNullException.ThrowIfNull(allow);
        return new(description, allow, null, allowNonRegular: false);
    }

    /// <summary>This policy, also allowing devices, FIFOs and sockets.</summary>
    public BackingFilePolicy WithNonRegularFiles() => new(Description, _allow, _root, allowNonRegular: true);

    /// <summary>
    /// Refuses a reference before anything is opened. <paramref name="fullPath"/> is null for a
    /// name only a custom resolver understands (a URL, a catalog key): the predicate then sees
    /// the name, and confinement judges the file the resolver opens.
    /// </summary>
    /// <exception cref="BackingFilePolicyException">The policy does not allow it.</exception>
    internal void Authorize(FileReference reference, string? fullPath)
    {
        // The predicate sees a canonical path: links and ".." resolved where the file exists.
        var target = fullPath is null ? reference.Name : Canonical(fullPath);
        if ((_allow is not null && !_allow(reference, target)) || (_root is not null && fullPath is not null && !IsInside(fullPath)))
        {
            throw new BackingFilePolicyException(reference, target, Description);
        }
    }

    /// <summary>
    /// Refuses an opened file whose real location escapes the tree (through a symbolic link), or,
    /// under a predicate, a file other than the one <paramref name="authorized"/> named (a relative
    /// data file name falls back to the current directory): the predicate must see what was opened.
    /// </summary>
    /// <exception cref="BackingFilePolicyException">The file really lies outside the tree, or the predicate refuses it.</exception>
    internal void AuthorizeOpened(FileReference reference, IStorage storage, string? authorized)
    {
        if (_allow is not null && storage.Path is { } path && Canonical(path) is var opened && !string.Equals(opened, authorized is null ? null : Canonical(authorized), StringComparison.Ordinal) && !_allow(reference, opened))
        {
            throw new BackingFilePolicyException(reference, opened, Description);
        }

        if (_root is null || storage.Path is not { } named)
        {
            return;
        }

        var real = storage is FileStorage file ? file.RealPath : Canonical(named);
        if (!IsInside(real))
        {
            throw new BackingFilePolicyException(reference, real, Description);
        }
    }

    /// <summary>The path with every link and ".." resolved as the kernel does, where the file exists; else by name.</summary>
    private static string Canonical(string path) =>
        (OperatingSystem.IsWindows() ? null : Posix.RealPath(path)) ?? Path.GetFullPath(path);

    private bool IsInside(string path)
    {
        var comparison = OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        var resolved = Canonical(path);
        var prefix = Path.EndsInDirectorySeparator(_root!) ? _root : _root + Path.DirectorySeparatorChar;
        return resolved.StartsWith(prefix, comparison) || string.Equals(resolved, _root, comparison);
    }
}
