namespace QcowDedup.Qcow2.Image;

/// <summary>An image names a backing or data file that its <see cref="BackingFilePolicy"/> does not allow it to open.</summary>
public sealed class BackingFilePolicyException : UnauthorizedAccessException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="reference">What the image named.</param>
    /// <param name="path">Where the name leads.</param>
    /// <param name="policy">What the policy allows.</param>
    public BackingFilePolicyException(FileReference reference, string path, string policy)
        : base($"The {(reference?.Kind == FileReferenceKind.ExternalDataFile ? "external data file" : "backing file")} '{reference?.Name}'{(reference?.ReferrerPath is { } referrer ? $" of {referrer}" : string.Empty)} leads to {path}, which the backing file policy ({policy}) does not allow")
    {
        ArgumentNullException.ThrowIfNull(reference);
        Reference = reference;
        ResolvedPath = path;
    }

    /// <summary>What the image named.</summary>
    public FileReference Reference { get; }

    /// <summary>Where the name leads.</summary>
    public string ResolvedPath { get; }
}
