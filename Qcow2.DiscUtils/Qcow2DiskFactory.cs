using DiscUtils;
using DiscUtils.Internal;
using DiscUtils.Streams;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.DiscUtils;

/// <summary>
/// DiscUtils' factory for ".qcow2": found by <c>VirtualDisk.OpenDisk</c> / <c>CreateDisk</c> once the
/// assembly is registered (<see cref="Qcow2DiscUtils.Register"/>). Variants: "dynamic" (plain qcow2)
/// and "dedup" (with an inline dedup index). Create parameters use qemu-img's -o names.
/// </summary>
[VirtualDiskFactory("QCOW2", ".qcow2")]
internal sealed class Qcow2DiskFactory : VirtualDiskFactory
{
    public override string[] Variants => ["dynamic", "dedup"];

    public static VirtualDiskTypeInfo TypeInfo(string variant) => new()
    {
        Name = "QCOW2",
        Variant = variant,
        CanBeHardDisk = true,
        DeterministicGeometry = true,
        PreservesBiosGeometry = false,
        CalcGeometry = Geometry.FromCapacity,
    };

    public override VirtualDiskTypeInfo GetDiskTypeInformation(string variant) => TypeInfo(CheckVariant(variant));

    public override DiskImageBuilder GetImageBuilder(string variant) =>
        throw new NotSupportedException(
            "DiscUtils' DiskImageBuilder cannot be implemented outside DiscUtils (its file specification has an internal constructor). " +
            "Create the image with VirtualDisk.CreateDisk(\"QCOW2\", …) and copy the content into it.");

    public override VirtualDisk CreateDisk(FileLocator locator, string variant, string path, VirtualDiskParameters diskParameters)
    {
        ArgumentNullException.ThrowIfNull(locator);
        ArgumentNullException.ThrowIfNull(diskParameters);
        var options = Qcow2DiscUtils.CreateOptions(CheckVariant(variant), diskParameters.Capacity, diskParameters.ExtendedParameters);
        return LocalPath(locator, path) is { } local ? Qcow2Disk.Create(local, options) : CreateOnLocator(locator, path, options);
    }

    public override VirtualDisk OpenDisk(string path, FileAccess access) => Qcow2Disk.Open(NormalisePath(path), access);

    public override VirtualDisk OpenDisk(FileLocator locator, string path, FileAccess access)
    {
        ArgumentNullException.ThrowIfNull(locator);
        if (LocalPath(locator, path) is { } local)
        {
            return Qcow2Disk.Open(local, access);
        }

        var options = Qcow2Disk.DefaultOpenOptions(access) with { BackingResolver = new LocatorBackingResolver(locator) };
        var stream = locator.Open(path, FileMode.Open, access, access == FileAccess.Read ? FileShare.Read : FileShare.None);
        return new Qcow2Disk(Qcow2Image.Open(new StreamStorage(stream, leaveOpen: false), options), Ownership.Dispose);
    }

    public override VirtualDiskLayer OpenDiskLayer(FileLocator locator, string path, FileAccess access)
    {
        ArgumentNullException.ThrowIfNull(locator);
        var local = LocalPath(locator, path) ?? throw new NotSupportedException(
            $"qcow2 layers are opened from local files only; '{path}' is inside another file system (open it with OpenDisk instead).");
        return Qcow2DiskLayer.Open(local);
    }

    /// <summary>Creates an image through a non-local locator (a file inside a DiscUtils file system).</summary>
    public static Qcow2Disk CreateOnLocator(FileLocator locator, string path, Qcow2CreateOptions options)
    {
        if (locator.Exists(path))
        {
            throw new IOException($"Could not create {path}: the file exists (delete it first; creating would destroy its contents).");
        }

        var resolver = new LocatorBackingResolver(locator);
        var stream = locator.Open(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        var storage = new StreamStorage(stream, leaveOpen: false);
        var open = (options.OpenOptions ?? new Qcow2OpenOptions()) with { BackingResolver = resolver };
        return new Qcow2Disk(Qcow2Image.Create(storage, options with { BackingResolver = resolver, OpenOptions = open }), Ownership.Dispose);
    }

    /// <summary>
    /// The local path a locator and name refer to, or null for a locator that is not the local file
    /// system. DiscUtils 0.16 hands its factories a directory ending in '\' on every OS, which Linux
    /// and macOS read as part of the name; that artefact is undone here.
    /// </summary>
    public static string? LocalPath(FileLocator locator, string path) =>
        locator is LocalLocator || locator.GetType().FullName == "DiscUtils.Internal.LocalFileLocator"
            ? NormalisePath(locator.GetFullPath(path))
            : null;

    /// <summary>Undoes DiscUtils' Windows-style joins ("/dir\/name", "/dir\name") where they name no file but the fixed path does.</summary>
    public static string NormalisePath(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (OperatingSystem.IsWindows() || File.Exists(path) || !path.Contains('\\', StringComparison.Ordinal))
        {
            return path;
        }

        var joined = path.Replace("\\/", "/", StringComparison.Ordinal);
        if (File.Exists(joined) || (!joined.Contains('\\', StringComparison.Ordinal) && Directory.Exists(Path.GetDirectoryName(joined))))
        {
            return joined; // the file exists, or is about to be created in a directory that does
        }

        var slashed = path.Replace('\\', '/');
        return File.Exists(slashed) ? slashed : joined;
    }

    private static string CheckVariant(string variant) =>
        variant?.ToLowerInvariant() switch
        {
            null or "" or "dynamic" => "dynamic",
            "dedup" => "dedup",
            _ => throw new ArgumentException($"Unknown qcow2 variant '{variant}' (use dynamic or dedup).", nameof(variant)),
        };
}

/// <summary>Opens backing files through the DiscUtils locator the top image came from.</summary>
internal sealed class LocatorBackingResolver(FileLocator locator) : IBackingFileResolver
{
    public IStorage Open(FileReference reference)
    {
        ArgumentNullException.ThrowIfNull(reference);
        if (!locator.Exists(reference.Name))
        {
            var what = reference.Kind == FileReferenceKind.BackingFile ? "backing file" : "external data file";
            throw new FileNotFoundException($"Could not open the {what} '{reference.Name}': it does not exist next to the image.", reference.Name);
        }

        var access = reference.Writable ? FileAccess.ReadWrite : FileAccess.Read;
        return new StreamStorage(locator.Open(reference.Name, FileMode.Open, access, FileShare.Read), leaveOpen: false);
    }
}
