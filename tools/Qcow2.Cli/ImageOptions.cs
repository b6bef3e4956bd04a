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
    public static Qcow2OpenOptions For(CommandLine line, string imagePath, bool writable = false)
    {
        if (writable)
        {
            ImageOpts.CheckWritable(imagePath); // --image-opts ...,read-only=on
        }

        return Extensions.ReadOptions(writable) with
        {
            ForceShare = ForceShare(line),
            BackingPolicy = Policy(line.Value(BackingPolicyOption), imagePath),
        };
    }

    /// <summary>qemu's cache modes (bdrv_parse_cache_mode); the library keeps its own flush order whichever is named.</summary>
    public static readonly string[] CacheModes = ["none", "off", "writeback", "writethrough", "directsync", "unsafe"];

    /// <summary>Refuses a -t (target) or -T (source) cache mode qemu-img would not know, in its words.</summary>
    /// <param name="line">The command line.</param>
    /// <param name="exitCode">qemu-img's exit code for the refusal (compare: 2).</param>
    public static void CheckCacheModes(CommandLine line, int exitCode = 1)
    {
        if (line.Value("-t") is { } cache && !CacheModes.Contains(cache))
        {
            throw new QemuArgumentError($"Invalid cache option: {cache}", exitCode);
        }

        if (line.Value("-T") is { } sourceCache && !CacheModes.Contains(sourceCache))
        {
            throw new QemuArgumentError($"Invalid source cache option: {sourceCache}", exitCode);
        }
    }

    /// <summary>qemu-img's warning when it opens for writing a file whose format it had to guess as raw.</summary>
    public static void WarnProbedRaw(string path)
    {
        Console.Error.WriteLine($"WARNING: Image format was not specified for '{path}' and probing guessed raw.");
        Console.Error.WriteLine("         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.");
        Console.Error.WriteLine("         Specify the 'raw' format explicitly to remove the restrictions.");
    }

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
