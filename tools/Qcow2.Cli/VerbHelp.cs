namespace QcowDedup.Cli;

/// <summary>
/// What `qcow2 help VERB` and `qcow2 VERB --help` print: the usage line, what the verb does, and
/// each option. Options shared by the verbs that open images are listed with each verb that takes them.
/// </summary>
internal static class VerbHelp
{
    private static readonly (string Flag, string Text) ForceShare = ("-U, --force-share", "open while another process (QEMU) writes the image; what is read may be inconsistent");
    private static readonly (string Flag, string Text) BackingPolicy = ("--backing-policy any|none|confined[:DIR]", "which backing and data files an image may name (confined: only under DIR, default the image's directory)");
    private static readonly (string Flag, string Text) Quiet = ("-q", "quiet: print nothing but errors");
    private static readonly (string Flag, string Text) Progress = ("-p", "show progress while working (on a terminal)");
    private static readonly (string Flag, string Text) Output = ("--output human|json", "output format; json keys as qemu-img's");
    private static readonly (string Flag, string Text) ImageOptsFlag = ("--image-opts", "FILE is a QEMU option string, e.g. driver=qcow2,file.filename=PATH,force-share=on (its format replaces -f)");
    private static readonly (string Flag, string Text) ObjectFlag = ("--object secret,id=ID,data=…|file=…", "a QEMU object definition, checked as qemu-img checks it (secret and throttle-group are taken)");
    private static readonly (string Flag, string Text) InputFormat = ("-f FMT", "input format: qcow2, raw, vmdk, vhdx, vpc, vdi (default: probed from the file's signature)");

    private static readonly Dictionary<string, (string Summary, (string Flag, string Text)[] Options)> Verbs = new(StringComparer.Ordinal)
    {
        ["info"] = ("Shows an image's format, sizes and qcow2 details (backing file, snapshots, bitmaps, dedup index).", [
            InputFormat, Output, ("--backing-chain", "also show every backing file down the chain"), ("--dedup-details", "also the dedup index's internals: log store, frozen incarnations, limbo, bytes per indexed cluster"), ForceShare, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["map"] = ("Shows how the guest disk is stored: data, zeros, and which file of the chain holds each range.", [
            InputFormat, Output, ("--start-offset OFFSET", "map from this guest offset (default 0)"), ("--max-length LENGTH", "map at most this many bytes"), ForceShare, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["check"] = ("Checks the image's metadata as qemu-img check does; exit 0 clean, 1 check errors, 2 corruptions, 3 leaks.", [
            ("-f qcow2", "input format (only qcow2 has metadata to check)"), ("-r leaks|all", "repair leaks, or everything repairable"), Output, Quiet, Progress, ForceShare, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["convert"] = ("Copies one disk, or several one after another, into a new image; zeros stay unallocated, and with dedup=on repeated clusters are stored once.", [
            InputFormat, ("-O FMT", "output format: qcow2, raw, vmdk, vhdx, vpc, vdi (default raw)"), ("-c", "compress clusters (qcow2: zlib, or zstd with -o compression_type=zstd)"),
            ("-o OPTIONS", "creation options of the output format (qcow2: as create, plus dedup=on; vmdk/vhdx/vpc: subformat=…; vdi: static=on)"),
            ("-B BACKING", "the new image's backing file: only what differs from it is written"), ("-F BACKING_FMT", "format of the -B backing file (required with -B)"),
            ("-l SNAPSHOT", "copy an internal snapshot: snapshot.id=ID, snapshot.name=NAME, or an id else a name"),
            ("-n", "do not create DST: write into the existing image or file (it keeps its size)"), ("--target-is-zero", "with -n: DST reads zeros already, so zeros are not written"),
            ("-S SPARSE", "zero detection: 0 writes every byte (fully allocated); else zero blocks of this size (multiple of 512) stay holes"),
            ("-m N", "parallel requests, 1 to 16 (accepted; the copy pipelines on every core)"), ("-W", "out-of-order writes (accepted; writes are ordered and pipelined)"),
            ("-C", "copy offloading (accepted; data is copied through memory)"), ("-r RATE", "at most RATE bytes per second (k, M, G suffixes)"),
            ("-t CACHE", "target cache mode: none, writeback, writethrough, directsync, unsafe (checked, then the library's own flush order applies)"), ("-T SRC_CACHE", "source cache mode, likewise"),
            ("--salvage", "copy unreadable 512-byte sectors of SRC as zeros, with a warning each, instead of failing"),
            ("--bitmaps", "copy the persistent dirty bitmaps too (qcow2 to qcow2 v3)"), ("--skip-broken-bitmaps", "with --bitmaps: leave out inconsistent bitmaps instead of failing"), Progress, Quiet, ForceShare, BackingPolicy, ImageOptsFlag, ("--target-image-opts", "with -n: DST is a QEMU option string too"), ObjectFlag]),
        ["compare"] = ("Compares two disks' contents; exit 0 identical, 1 different, 2 error. A shorter disk compares as zeros past its end.", [
            ("-f FMT", "format of the first disk (default: probed)"), ("-F FMT", "format of the second disk (default: probed)"), ("-s", "strict: different sizes or allocation count as different"), ("-T SRC_CACHE", "cache mode, checked as qemu-img checks it"), Progress, ForceShare, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["create"] = ("Creates a qcow2 image (SIZE may be taken from the backing file).", [
            ("-f qcow2|raw|vmdk|vhdx|vpc|vdi", "format (qcow2 is the default here, unlike qemu-img; vmdk/vhdx/vpc/vdi through DiscUtils, with -o subformat=… or static=on)"), ("-o OPTIONS", "compat, cluster_size, refcount_bits, lazy_refcounts, extended_l2, compression_type, preallocation, data_file, data_file_raw, dedup=on and dedup_*; -o help lists them"),
            ("-b BACKING", "backing file (with -F, as qemu-img 7.2 requires)"), ("-F FMT", "backing file format"), ("-u", "do not open the backing file (its size must then be given)"), Quiet, ObjectFlag]),
        ["resize"] = ("Changes the virtual size of a qcow2 image or raw file: SIZE, +SIZE or -SIZE.", [
            ("--shrink", "allow making the image smaller (data past the new end is lost)"), ("--preallocation=off|metadata|falloc|full", "allocate the new part (growing only; raw takes falloc and full)"),
            ("-f qcow2|raw", "format (default: probed)"), Quiet, ImageOptsFlag, ObjectFlag]),
        ["measure"] = ("Says how large a new or converted image needs to be (required and fully allocated), as qemu-img measure.", [
            Output, InputFormat, ("-O raw|qcow2", "output format to measure for (default raw)"), ("-o OPTIONS", "output creation options"), ("--size SIZE", "measure a new empty image of SIZE instead of SRC"), ("-l SNAPSHOT", "measure an internal snapshot of SRC: snapshot.id=ID, snapshot.name=NAME, or an id else a name"), ForceShare, ImageOptsFlag, ObjectFlag]),
        ["io"] = ("Runs qemu-io style commands on an image: write, read (with pattern check), discard, flush.", [
            ("-c CMD", "a command; repeatable: 'write [-P PATTERN] [-z] [-u] [-c] OFF LEN', 'read [-P PATTERN] OFF LEN', 'discard OFF LEN', 'flush'"), ("-f qcow2", "format"), ("-r", "open read-only"), ForceShare, BackingPolicy, ImageOptsFlag]),
        ["dedup"] = ("Deduplicates an existing image in place and leaves an index so later writes deduplicate too.", [
            ("-o OPTIONS", "dedup_log_order, dedup_max_incarnations, dedup_memory, dedup_verify=on, dedup_max_shares"), Progress, Quiet, BackingPolicy]),
        ["snapshot"] = ("Lists, creates, applies or deletes internal snapshots.", [
            ("-l", "list snapshots"), ("-c NAME", "create a snapshot"), ("-a NAME", "apply (revert to) a snapshot, by id or else by name"), ("-d NAME", "delete a snapshot, by name"), ("-f qcow2", "format"), Quiet, ForceShare, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["commit"] = ("Writes an overlay's data into its backing file (or one further down with -b), then empties the overlay unless -d or -b.", [
            ("-b BASE", "the file to commit into: the direct backing file or any below it (everything above BASE goes into it; implies -d)"), ("-d", "keep the overlay's data (do not empty it)"), ("-r RATE", "at most RATE bytes per second"), ("-t CACHE", "cache mode, checked as qemu-img checks it"), ("-f qcow2", "format"), Progress, Quiet, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["rebase"] = ("Changes an image's backing file; safe mode copies what the old and new backing files disagree on.", [
            ("-b BACKING", "the new backing file (\"\" removes it)"), ("-F FMT", "the new backing file's format"), ("-u", "unsafe: only rewrite the name"), ("-t CACHE", "cache mode of FILE, checked as qemu-img checks it"), ("-T SRC_CACHE", "cache mode of the backing files, likewise"), ("-f qcow2", "format"), Progress, Quiet, ForceShare, BackingPolicy, ImageOptsFlag, ObjectFlag]),
        ["amend"] = ("Changes format options of an existing image in place.", [
            ("-o OPTIONS", "compat=0.10|1.1, refcount_bits=N, lazy_refcounts=on|off, size=SIZE, data_file=NAME (rename the external data file), data_file_raw=off"), ("-f qcow2", "format"), ("--force", "accepted, as qemu-img takes it (no amendment here needs forcing)"), Progress, Quiet, ImageOptsFlag, ObjectFlag]),
        ["bench"] = ("Measures request throughput through the library, with qemu-img bench's requests and output.", [
            ("-c COUNT", "number of requests"), ("-d DEPTH", "requests in flight"), ("-s BUFFER_SIZE", "request size"), ("-S STEP_SIZE", "offset step between requests"), ("-o OFFSET", "first offset"),
            ("-w", "write instead of read"), ("--pattern=PATTERN", "byte written with -w"), ("-t CACHE", "cache mode (accepted as qemu-img does)"), ("-f qcow2", "format"), Quiet, ForceShare, ImageOptsFlag]),
        ["dd"] = ("Copies a range of a disk into a new image, in blocks, as qemu-img dd (operands, not options, give the range).", [
            ("bs=BLOCK_SIZE", "block size in bytes (default 512; k, M suffixes)"), ("count=BLOCKS", "copy at most this many blocks"), ("skip=BLOCKS", "start this many blocks into the input"),
            ("if=INPUT", "the disk to read"), ("of=OUTPUT", "the image to create (overwritten)"), ("-f FMT", "input format (default: probed)"), ("-O qcow2|raw", "output format (default raw)"), ForceShare, ImageOptsFlag]),
        ["bitmap"] = ("Changes persistent dirty bitmaps (the write tracking incremental backups build on); the actions run in the order given.", [
            ("--add", "add BITMAP, recording every write from now on"), ("--remove", "remove BITMAP (also one left inconsistent)"), ("--clear", "clear every bit of BITMAP"),
            ("--enable", "make BITMAP record writes"), ("--disable", "stop BITMAP recording writes"), ("--merge SOURCE", "set in BITMAP every bit set in bitmap SOURCE"),
            ("-b SOURCE_FILE", "take the --merge SOURCE from this image (same disk size)"), ("-F SOURCE_FMT", "format of SOURCE_FILE"),
            ("-g GRANULARITY", "bytes per bit for --add: a power of two, 512 to 2G (default: the cluster size, kept between 4k and 64k)"), ("-f qcow2", "format"), ImageOptsFlag, ObjectFlag]),
    };

    /// <summary>The verbs that have help (every verb).</summary>
    public static IEnumerable<string> Names => Verbs.Keys;

    /// <summary>Whether <paramref name="args"/> (after the verb) ask for help: -h or --help anywhere.</summary>
    public static bool Asked(IReadOnlyList<string> args) => args.Any(a => a is "-h" or "--help");

    /// <summary>The help text of <paramref name="verb"/>, or null for an unknown verb.</summary>
    public static string? For(string verb, string usage)
    {
        if (!Verbs.TryGetValue(verb, out var help))
        {
            return null;
        }

        var width = help.Options.Max(o => o.Flag.Length) + 2;
        var text = new System.Text.StringBuilder();
        text.Append("usage: ").AppendLine(usage).AppendLine().AppendLine(help.Summary).AppendLine().AppendLine("Options:");
        foreach (var (flag, description) in help.Options)
        {
            text.Append("  ").Append(flag.PadRight(width)).AppendLine(description);
        }

        return text.ToString();
    }
}
