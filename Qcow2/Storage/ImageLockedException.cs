namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Another opener — a QEMU process, another program using this library, or another open in
/// this process — holds the file in a way that conflicts with this open, as QEMU reports it:
/// <c>Failed to get "write" lock</c> when someone forbids a permission this open needs,
/// <c>Failed to get shared "write" lock</c> when someone holds a permission this open forbids.
/// </summary>
public sealed class ImageLockedException : IOException
{
    /// <summary>Creates the exception for <paramref name="path"/> and the permission that conflicts.</summary>
    /// <param name="path">The locked file.</param>
    /// <param name="permission">QEMU's name of the permission ("write", "resize", "consistent read").</param>
    /// <param name="shared">True when this open forbids a permission someone else holds.</param>
    public ImageLockedException(string path, string permission, bool shared)
        : base($"Failed to get {(shared ? "shared " : string.Empty)}\"{permission}\" lock. Is another process using the image [{path}]?")
    {
        FilePath = path;
        Permission = permission;
        Shared = shared;
    }

    /// <summary>The locked file.</summary>
    public string FilePath { get; }

    /// <summary>QEMU's name of the conflicting permission.</summary>
    public string Permission { get; }

    /// <summary>True when this open forbids a permission someone else holds ("shared" lock in QEMU's words).</summary>
    public bool Shared { get; }
}
