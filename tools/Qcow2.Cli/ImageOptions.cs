using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// How the verbs open images: read-only or writable, with -U/--force-share where qemu-img takes
/// it, and under the backing file policy chosen with --backing-policy.
/// </summary>
internal static class ImageOptions
{
    /// <summary>Which backing and data files an image may open: any (default), none, confined or confined:DIR.</summary>
    public const string BackingPolicyOption = "--backing-policy";

    /// <summary>qemu-img's spellings of force-share, for the verbs that take it.</summary>
    public static readonly string[] ForceShareFlags = ["-U", "--force-share"];

    /// <summary>Open options for the image at <paramref name="imagePath"/> as the command line asks.</summary>
    public static Qcow2OpenOptions For(CommandLine line, string imagePath, bool writable = false) =>
        Extensions.ReadOptions(writable) with
        {
            ForceShare = ForceShare(line),
            BackingPolicy = Policy(line.Value(BackingPolicyOption), imagePath),
        };

    /// <summary>Whether -U or --force-share was given.</summary>
    public static bool ForceShare(CommandLine line) => ForceShareFlags.Any(line.Has);

    /// <summary>
    /// any: every regular file, as QEMU; none: no backing or data files; confined: only files under
    /// the image's own directory; confined:DIR: only files under DIR (links resolved in both).
    /// </summary>
    public static BackingFilePolicy Policy(string? text, string imagePath) => text switch
    {
        null or "any" => BackingFilePolicy.AnyRegularFile,
        "none" => BackingFilePolicy.None,
        "confined" => BackingFilePolicy.ConfinedTo(Path.GetDirectoryName(Path.GetFullPath(imagePath))!),
        _ when text.StartsWith("confined:", StringComparison.Ordinal) && text.Length > "confined:".Length => BackingFilePolicy.ConfinedTo(text["confined:".Length..]),
        _ => throw new UsageException($"invalid {BackingPolicyOption} '{text}': use any, none, confined or confined:DIR"),
    };
}
