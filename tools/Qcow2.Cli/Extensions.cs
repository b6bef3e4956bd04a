using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli;

/// <summary>
/// Where deduplication hooks into the verbs: its -o keys, how images with them are created and
/// opened, and the options every verb uses to see an existing index.
/// </summary>
internal static class Extensions
{
    /// <summary>-o keys beyond qemu-img's.</summary>
    public static IReadOnlyList<string> CreateOptionKeys { get; } =
        ["dedup", "dedup_log_order", "dedup_max_incarnations", "dedup_memory", "dedup_verify", "dedup_max_shares"];

    /// <summary>Open options that load an existing dedup index without starting one.</summary>
    public static Qcow2OpenOptions ReadOptions(bool writable = false) =>
        new Qcow2OpenOptions { Writable = writable }.WithDedup(new DedupOptions { Enable = false });

    /// <summary>Dedup options from -o keys, or null when dedup is not asked for.</summary>
    public static DedupOptions? DedupOptionsFrom(CreateOptionParser parser)
    {
        if (!parser.Flag("dedup"))
        {
            if (CreateOptionKeys.Skip(1).Any(parser.Has))
            {
                throw new UsageException("dedup_* options need dedup=on");
            }

            return null;
        }

        return new DedupOptions
        {
            LogStoreOrder = parser.Int("dedup_log_order"),
            MaxIncarnations = parser.Int("dedup_max_incarnations") ?? 8,
            IndexMemoryBudget = parser["dedup_memory"] is { } memory ? Sizes.ParseParameter("dedup_memory", memory) : 0,
            Verify = parser.Flag("dedup_verify"),
            MaxSharesPerCluster = parser.Int("dedup_max_shares") ?? 0,
        };
    }

    /// <summary>Creates an image honouring core and dedup options.</summary>
    public static Qcow2Image Create(string path, Qcow2CreateOptions options, CreateOptionParser parser) =>
        Qcow2Image.Create(path, DedupOptionsFrom(parser) is { } dedup ? options.WithDedup(dedup) : options);
}
