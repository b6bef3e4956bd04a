namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// The command lines of the parity suite, over the fixtures of <see cref="ParityFixtures"/>: every
/// verb both tools have, its options, and wrong input (missing files, non-images, bad values).
/// </summary>
internal static class ParityCases
{
    /// <summary>
    /// Marks a case whose error text deliberately differs (docs/cli-differences.md, "error
    /// messages"): exit code, stdout and the resulting files must still match, and both must say
    /// something on stderr.
    /// </summary>
    public const string WordingDiffers = " #wording";

    /// <summary>
    /// Marks a case where qemu-img leaves a damaged image (leaked clusters) and we leave it clean
    /// (docs/cli-differences.md): everything else must match, and ours must check clean.
    /// </summary>
    public const string CleanerResult = " #cleaner";

    /// <summary>
    /// Marks a case where qemu-img clears the dirty bit of an image whose refcounts it could not
    /// repair and we keep it, so the next read-write open rebuilds them (docs/cli-differences.md).
    /// </summary>
    public const string KeepsDirtyBit = " #keepsdirty";

    public static IEnumerable<string> All => Info.Concat(Map).Concat(Check).Concat(Measure).Concat(Snapshot).Concat(Compare)
        .Concat(Create).Concat(Convert).Concat(Resize).Concat(Amend).Concat(Commit).Concat(Rebase).Concat(Bitmap).Concat(Dd)
        .Concat(ImageOpts).Concat(Objects).Concat(Salvage).Concat(OptionValues);

    private static readonly string[] Qcow2 = ParityFixtures.Qcow2Images;
    private static readonly string[] Files = ParityFixtures.AllFiles;

    private static IEnumerable<string> Info =>
        Files.SelectMany(f => new[] { $"info {f}", $"info --output=json {f}" })
            .Concat(Qcow2.Append("raw.img").SelectMany(f => new[] { $"info --backing-chain {f}", $"info --output=json --backing-chain {f}", $"info -U {f}" }))
            .Concat(["info -f qcow2 raw.img", "info -f raw base.qcow2", "info -f raw --output=json top.qcow2", "info --output=xml base.qcow2"]);

    private static IEnumerable<string> Map =>
        Qcow2.Append("raw.img").SelectMany(f => new[]
        {
            $"map {f}", $"map --output=json {f}", $"map --start-offset 1M --max-length 3M {f}", $"map --output=json --start-offset 100k {f}",
        }).Concat(["map empty.img", "map text.txt", "map missing.qcow2", "map -f raw top.qcow2", "map --output=json --max-length 0 base.qcow2", "map --start-offset x base.qcow2"]);

    private static IEnumerable<string> Check =>
        Files.SelectMany(f => new[] { $"check {f}", $"check --output=json {f}", $"check -q {f}" })
            .Concat(Qcow2.Where(f => f != "dirty.qcow2").Select(f => $"check -r leaks {f}")).Concat(Qcow2.Select(f => $"check -r all {f}"))
            .Concat(["check -r none base.qcow2", "check --output=json -r all dirty.qcow2", "check -r leaks dirty.qcow2" + KeepsDirtyBit, "check -f raw base.qcow2", "check -T none base.qcow2", "check -T bogus base.qcow2"]);

    private static IEnumerable<string> Measure =>
        Qcow2.Append("raw.img").SelectMany(f => new[] { $"measure -O qcow2 {f}", $"measure --output=json -O qcow2 {f}", $"measure {f}" })
            .Concat([
                "measure --size 1G -O qcow2", "measure --size 1G -O qcow2 -o cluster_size=4k", "measure --size 1G -O qcow2 -o preallocation=full",
                "measure --size 1G -O raw", "measure --size 0 -O qcow2", "measure --size 1x -O qcow2", "measure -O qcow2 -o compat=0.10 snap.qcow2",
                "measure -O qcow2 -o refcount_bits=64 base.qcow2", "measure -O qcow2 -o extended_l2=on base.qcow2", "measure -O qcow2 missing.qcow2",
                "measure -O qcow2 -l s1 snap.qcow2", "measure --output=json -O qcow2 -l snapshot.name=s2 snap.qcow2", "measure -O qcow2 -l snapshot.id=1 snap.qcow2", "measure -O qcow2 -l s1 --size 1G",
                "measure -l nope -O qcow2 snap.qcow2",
            ]);

    private static IEnumerable<string> Snapshot =>
        Files.Select(f => $"snapshot -l {f}").Concat([
            "snapshot -c new base.qcow2", "snapshot -c s1 snap.qcow2", "snapshot -a s1 snap.qcow2", "snapshot -a 1 snap.qcow2", "snapshot -a nope snap.qcow2",
            "snapshot -d s1 snap.qcow2", "snapshot -d nope snap.qcow2", "snapshot -c x v2.qcow2", "snapshot -l -U snap.qcow2", "snapshot -d s2 snap.qcow2",
        ]);

    private static IEnumerable<string> Compare => new[]
    {
        "base.qcow2 comp.qcow2", "base.qcow2 zstd.qcow2", "base.qcow2 top.qcow2", "top.qcow2 base.qcow2", "base.qcow2 raw.img", "raw.img raw.img",
        "base.qcow2 base.qcow2", "snap.qcow2 base.qcow2", "v2.qcow2 ext.qcow2", "c4k.qcow2 c4k.qcow2", "base.qcow2 missing.qcow2", "empty.img base.qcow2",
        "c4k.qcow2 base.qcow2", "ext.qcow2 base.qcow2", "top.qcow2 deep.qcow2", "raw.img c4k.qcow2", "comp.qcow2 zstd.qcow2", "deep.qcow2 raw.img",
    }.SelectMany(pair => new[] { $"compare {pair}", $"compare -s {pair}" }).Concat(["compare -f qcow2 -F raw base.qcow2 raw.img", "compare -f raw -F raw raw.img raw.img", "compare -q base.qcow2 comp.qcow2", "compare -T none base.qcow2 comp.qcow2", "compare -T bogus base.qcow2 comp.qcow2"]);

    private static IEnumerable<string> Create => new[]
    {
        "-f qcow2 new.qcow2 1M", "-f qcow2 -o compat=0.10 new.qcow2 1M", "-f qcow2 -o compat=1.1 new.qcow2 1M", "-f qcow2 -o cluster_size=4k new.qcow2 1M",
        "-f qcow2 -o cluster_size=2M new.qcow2 16M", "-f qcow2 -o cluster_size=512 new.qcow2 1M", "-f qcow2 -o cluster_size=1000 new.qcow2 1M",
        "-f qcow2 -o refcount_bits=1 new.qcow2 1M", "-f qcow2 -o refcount_bits=64 new.qcow2 1M", "-f qcow2 -o refcount_bits=3 new.qcow2 1M",
        "-f qcow2 -o lazy_refcounts=on new.qcow2 1M", "-f qcow2 -o extended_l2=on new.qcow2 1M", "-f qcow2 -o extended_l2=on,cluster_size=4k new.qcow2 1M",
        "-f qcow2 -o compression_type=zstd new.qcow2 1M", "-f qcow2 -o preallocation=metadata new.qcow2 4M", "-f qcow2 -o preallocation=falloc new.qcow2 4M",
        "-f qcow2 -o preallocation=full new.qcow2 4M", "-f qcow2 -o preallocation=bogus new.qcow2 4M", "-f qcow2 -b base.qcow2 -F qcow2 new.qcow2",
        "-f qcow2 -b base.qcow2 -F qcow2 new.qcow2 32M", "-f qcow2 -u -b missing.qcow2 -F qcow2 new.qcow2 1M", "-f qcow2 -b missing.qcow2 -F qcow2 new.qcow2",
        "-f qcow2 -b raw.img -F raw new.qcow2", "-f raw new.img 1M", "-f raw -o preallocation=full new.img 1M", "-f raw -o preallocation=falloc new.img 1M",
        "-q -f qcow2 new.qcow2 1M", "-f qcow2 new.qcow2 1.5M", "-f qcow2 new.qcow2 0", "-f qcow2 new.qcow2 -1", "-f qcow2 new.qcow2 1x", "-f qcow2 new.qcow2",
        "-f qcow2 base.qcow2 1M", "-f qcow2 -o size=2M new.qcow2", "-f qcow2 -o compat=0.10,lazy_refcounts=on new.qcow2 1M", "-f qcow2 -o compat=0.10,refcount_bits=8 new.qcow2 1M",
        "-f qcow2 -o data_file=new.data new.qcow2 1M", "-f qcow2 -o data_file=new.data,data_file_raw=on new.qcow2 1M", "-f bogus new.img 1M", "-f raw -o preallocation=metadata new.img 1M",
        "-f raw -o cluster_size=4k new.img 1M", "-f raw new.img", "-f qcow2 -o compat=0.10,extended_l2=on new.qcow2 1M", "-f qcow2 -o compat=0.10,compression_type=zstd new.qcow2 1M",
        "-f qcow2 -o compat=0.10,data_file=new.data new.qcow2 1M", "-f qcow2 -o preallocation=full,backing_file=base.qcow2,backing_fmt=qcow2 new.qcow2 1M", "-f qcow2 -o cluster_size=abc new.qcow2 1M",
        "-f qcow2 -o refcount_bits=x new.qcow2 1M", "-f qcow2 -o extended_l2=maybe new.qcow2 1M", "-f qcow2 -o compat=2 new.qcow2 1M", "-f qcow2 -o compression_type=foo new.qcow2 1M",
        "-f qcow2 -o data_file_raw=on new.qcow2 1M", "-f qcow2 -o bogus=1 new.qcow2 1M", "-f qcow2 -o compat=v3 -b base.qcow2 -F qcow2 new.qcow2 1M", "-f qcow2 -o size=1x new.qcow2",
    }.Select(a => $"create {a}");

    private static IEnumerable<string> Convert =>
        Qcow2.Append("raw.img").SelectMany(f => new[] { $"convert -O qcow2 {f} new.qcow2", $"convert -O raw {f} new.img" })
            .Concat(new[]
            {
                "-c -O qcow2 base.qcow2 new.qcow2", "-c -O qcow2 -o compression_type=zstd top.qcow2 new.qcow2", "-O qcow2 -o compat=0.10 base.qcow2 new.qcow2",
                "-O qcow2 -o cluster_size=4k top.qcow2 new.qcow2", "-f raw -O qcow2 raw.img new.qcow2", "-O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2 new.qcow2",
                "-q -O qcow2 base.qcow2 new.qcow2", "-O qcow2 missing.qcow2 new.qcow2", "-O qcow2 text.txt new.qcow2", "-O qcow2 empty.img new.qcow2",
                "-O qcow2 base.qcow2 base.qcow2" + WordingDiffers, "-O bogus base.qcow2 new.img", "-O qcow2 -o preallocation=metadata base.qcow2 new.qcow2", "-O qcow2 -o extended_l2=on top.qcow2 new.qcow2",
                "-O qcow2 -o refcount_bits=1 base.qcow2 new.qcow2", "-O qcow2 -s s1 snap.qcow2 new.qcow2", "-O qcow2 -l s2 snap.qcow2 new.qcow2", "-O qcow2 -l snapshot.name=s1 snap.qcow2 new.qcow2",
                "-n -O qcow2 base.qcow2 comp.qcow2", "-n -O raw base.qcow2 raw.img", "-n --target-is-zero -O raw raw.img new.img", "-O qcow2 -B base.qcow2 -F qcow2 top.qcow2 new.qcow2",
                "-S 0 -O raw base.qcow2 new.img", "-S 64k -O qcow2 base.qcow2 new.qcow2", "-W -O qcow2 base.qcow2 new.qcow2", "-m 4 -O qcow2 base.qcow2 new.qcow2",
                "-t none -T none -O qcow2 base.qcow2 new.qcow2", "-C -O qcow2 base.qcow2 new.qcow2", "-r 100M -O qcow2 base.qcow2 new.qcow2", "--salvage -O qcow2 base.qcow2 new.qcow2",
                "-O qcow2 base.qcow2 raw.img new.qcow2",
            }.Select(a => $"convert {a}"));

    private static IEnumerable<string> Resize => new[]
    {
        "base.qcow2 32M", "base.qcow2 +1M", "base.qcow2 -1M", "--shrink base.qcow2 8M", "--shrink base.qcow2 -1M", "-f raw raw.img 32M", "-f raw --shrink raw.img 8M",
        "snap.qcow2 32M", "--shrink snap.qcow2 8M", "bm.qcow2 +1M", "v2.qcow2 32M", "base.qcow2 1x", "base.qcow2 0", "missing.qcow2 1M", "-q base.qcow2 20M",
        "--preallocation=full base.qcow2 20M", "--preallocation=metadata base.qcow2 20M", "--preallocation=falloc base.qcow2 20M", "top.qcow2 32M", "c4k.qcow2 17M",
        "--preallocation=full --shrink base.qcow2 8M", "--preallocation=bogus base.qcow2 20M", "-f raw --preallocation=metadata raw.img 20M", "-f raw --preallocation=full raw.img 20M",
        "-f raw --preallocation=falloc raw.img 20M", "raw.img 20M", "--preallocation=metadata c4k.qcow2 3000k", "--shrink snap.qcow2 -8M", "--shrink top.qcow2 4M",
    }.Select(a => $"resize {a}");

    private static IEnumerable<string> Amend => new[]
    {
        "-o compat=0.10 base.qcow2", "-o compat=1.1 v2.qcow2", "-o refcount_bits=64 base.qcow2", "-o refcount_bits=1 c4k.qcow2", "-o lazy_refcounts=on base.qcow2",
        "-o size=32M base.qcow2", "-o size=8M base.qcow2", "-o cluster_size=4k base.qcow2", "-o compat=0.10 bm.qcow2" + CleanerResult, "-o compat=0.10 snap.qcow2", "-o compat=0.10 ext.qcow2",
        "-f raw -o size=1M raw.img", "base.qcow2", "-o bogus=1 base.qcow2", "-o size=8M --force base.qcow2", "-o compat=0.10 top.qcow2",
        "-o compat=0.10,size=32M bm.qcow2" + CleanerResult, "-o size=8M snap.qcow2", "raw.img -o size=1M",
        "-o data_file=ext.data ext-data.qcow2", "-o data_file_raw=on ext-data.qcow2", "-o data_file_raw=off ext-data.qcow2", "-o data_file=x.data base.qcow2", "-o data_file_raw=on base.qcow2",
        "-o data_file=ext.data,data_file_raw=off ext-data.qcow2",
    }.Select(a => $"amend {a}");

    private static IEnumerable<string> Commit => new[]
    {
        "top.qcow2", "-d top.qcow2", "base.qcow2", "-b base.qcow2 top.qcow2", "-q top.qcow2", "missing.qcow2", "-f qcow2 top.qcow2",
        "-t none top.qcow2", "-t bogus top.qcow2", "-r 100M top.qcow2", "-r x top.qcow2", "-b base.qcow2 deep.qcow2", "-b top.qcow2 deep.qcow2", "-d -b base.qcow2 deep.qcow2",
        "-b nope.qcow2 deep.qcow2", "-b deep.qcow2 deep.qcow2", "-q -b base.qcow2 deep.qcow2",
    }.Select(a => $"commit {a}");

    private static IEnumerable<string> Rebase => new[]
    {
        "-u -b '' top.qcow2", "-b '' top.qcow2", "-u -b raw.img -F raw top.qcow2", "-b comp.qcow2 -F qcow2 top.qcow2", "-b raw.img -F raw top.qcow2",
        "-b missing.qcow2 -F qcow2 top.qcow2", "-u -b missing.qcow2 -F qcow2 top.qcow2", "-b base.qcow2 top.qcow2", "-b base.qcow2 -F qcow2 base.qcow2" + WordingDiffers, "-q -b '' top.qcow2",
        "-t none -T writeback -b comp.qcow2 -F qcow2 top.qcow2", "-t bogus -b comp.qcow2 -F qcow2 top.qcow2", "-T bogus -b comp.qcow2 -F qcow2 top.qcow2", "-U -b comp.qcow2 -F qcow2 top.qcow2", "-u -b base.qcow2 top.qcow2",
    }.Select(a => $"rebase {a}");

    private static IEnumerable<string> Bitmap => new[]
    {
        "--add bm.qcow2 new", "--remove bm.qcow2 a", "--clear bm.qcow2 a", "--enable bm.qcow2 d", "--merge a bm.qcow2 d", "--add base.qcow2 x", "--add v2.qcow2 x" + WordingDiffers,
    }.Select(a => $"bitmap {a}");

    private static IEnumerable<string> Dd => new[]
    {
        "if=base.qcow2 of=new.img", "-O qcow2 if=top.qcow2 of=new.qcow2", "-O qcow2 bs=64k count=3 skip=15 if=base.qcow2 of=new.qcow2", "bs=3k count=2 skip=1 if=base.qcow2 of=new.img",
        "bs=1M count=4 if=snap.qcow2 of=new.img", "if=base.qcow2", "of=new.img", "bs=0 if=base.qcow2 of=new.img", "count=x if=base.qcow2 of=new.img", "foo=1 if=base.qcow2 of=new.img",
        "skip=100000 if=base.qcow2 of=new.img", "bs=1M count=0 if=base.qcow2 of=new.img", "-f raw bs=1k count=1 if=base.qcow2 of=new.img", "if=missing.qcow2 of=new.img",
        "bs=4k skip=3 if=raw.img of=new.img", "-O qcow2 bs=1M skip=2 if=comp.qcow2 of=new.qcow2", "-O bogus if=base.qcow2 of=new.img", "bs=3G if=base.qcow2 of=new.img",
    }.Select(a => $"dd {a}");

    /// <summary>qemu-img's --image-opts: images named by QEMU option strings, on every verb that takes them, and the strings QEMU refuses.</summary>
    private static IEnumerable<string> ImageOpts =>
        new[]
        {
            "", ",foo=bar", ",l2-cache-size=1M", ",l2-cache-size=abc", ",file.foo=1", ",lazy-refcounts=maybe", ",overlap-check=bad", ",overlap-check.template=none",
            ",force-share=on,read-only=on,cache.direct=off,cache.no-flush=on,discard=unmap,detect-zeroes=on,node-name=n1,file.node-name=n2,file.locking=off,file.aio=threads",
            ",cache-size=1M,l2-cache-size=2M", ",node-name=1bad", ",discard=bad", ",file.locking=bad", ",file.aio=bad", ",cache-clean-interval=x", ",cache.no-flush=x",
            ",overlap-check.main-header=x", ",file.drop-cache=x", ",driver=raw", ",,x", ",=x", ",backing.driver=qcow2",
            ",lazy-refcounts=yes,", ",detect-zeroes=unmap", ",detect-zeroes=unmap,discard=unmap", ",overlap-check=none,overlap-check.template=all", ",node-name=n1,file.node-name=n1",
            ",file.aio=native", ",file.aio=native,cache.direct=on", ",file.pr-manager=x",
        }.Select(extra => $"info --image-opts driver=qcow2,file.filename=base.qcow2{extra}")
        .Concat([
            "info --output=json --image-opts file.filename=base.qcow2", "info --image-opts driver=raw,file.filename=raw.img", "info --image-opts driver=qcow2,file.filename=missing.qcow2",
            "info --image-opts driver=foo,file.filename=base.qcow2", "info --image-opts driver=qcow2", "info --image-opts base.qcow2", "info --image-opts driver=qcow2,file=base.qcow2",
            "info --image-opts driver=qcow2,filename=base.qcow2", "info --image-opts -f qcow2 driver=qcow2,file.filename=base.qcow2", "info --image-opts driver=qcow2,file.filename=raw.img",
            "info --image-opts driver=qcow2,file.filename=text.txt", "info --backing-chain --image-opts driver=qcow2,file.filename=deep.qcow2", "info --output=json --image-opts driver=qcow2,file.filename=top.qcow2,force-share=on",
            "check --image-opts driver=qcow2,file.filename=base.qcow2", "check --output=json --image-opts driver=qcow2,file.filename=c4k.qcow2", "check --image-opts driver=qcow2,file.filename=missing.qcow2",
            "check -r all --image-opts driver=qcow2,file.filename=dirty.qcow2", "map --image-opts driver=qcow2,file.filename=top.qcow2", "map --output=json --image-opts driver=qcow2,file.filename=ext.qcow2",
            "compare --image-opts driver=qcow2,file.filename=base.qcow2 driver=qcow2,file.filename=comp.qcow2", "compare --image-opts driver=qcow2,file.filename=base.qcow2 driver=raw,file.filename=raw.img",
            "compare --image-opts -F qcow2 driver=qcow2,file.filename=base.qcow2 driver=qcow2,file.filename=comp.qcow2", "compare --image-opts driver=qcow2,file.filename=base.qcow2 driver=qcow2,file.filename=missing.qcow2",
            "compare --image-opts driver=qcow2,file.filename=base.qcow2 driver=qcow2,file.filename=comp.qcow2,foo=1",
            "convert --image-opts -O raw driver=qcow2,file.filename=top.qcow2 out.raw", "convert --image-opts -O qcow2 driver=qcow2,file.filename=base.qcow2 driver=qcow2,file.filename=snap.qcow2 out.qcow2",
            "convert --image-opts -f qcow2 -O raw driver=qcow2,file.filename=base.qcow2 out.raw", "convert -n --target-image-opts base.qcow2 driver=qcow2,file.filename=snap.qcow2",
            "convert --target-image-opts base.qcow2 driver=raw,file.filename=out.raw", "convert -n -O raw --target-image-opts base.qcow2 driver=raw,file.filename=out.raw",
            "convert -n --target-image-opts base.qcow2 driver=qcow2,file.filename=missing.qcow2", "convert -n --target-image-opts base.qcow2 snap.qcow2",
            "resize --image-opts driver=qcow2,file.filename=base.qcow2 +1M", "resize --image-opts driver=qcow2,file.filename=base.qcow2,read-only=on +1M",
            "info -U --image-opts driver=qcow2,file.filename=base.qcow2,force-share=off", "bitmap --add --image-opts driver=qcow2,file.filename=base.qcow2,read-only=on b9", "resize --image-opts driver=qcow2,file.filename=base.qcow2,force-share=on +1M", "resize --image-opts driver=raw,file.filename=raw.img 20M",
            "snapshot -l --image-opts driver=qcow2,file.filename=snap.qcow2", "snapshot -c s9 --image-opts driver=qcow2,file.filename=base.qcow2", "snapshot -l -U --image-opts driver=qcow2,file.filename=snap.qcow2,force-share=on",
            "measure -O qcow2 --image-opts driver=qcow2,file.filename=base.qcow2", "measure --output=json -O qcow2 --image-opts driver=raw,file.filename=raw.img",
            "amend -o lazy_refcounts=on --image-opts driver=qcow2,file.filename=base.qcow2", "amend -f qcow2 -o lazy_refcounts=on --image-opts driver=qcow2,file.filename=base.qcow2",
            "commit --image-opts driver=qcow2,file.filename=top.qcow2", "rebase -u -b base.qcow2 -F qcow2 --image-opts driver=qcow2,file.filename=deep.qcow2",
            "bitmap --add --image-opts driver=qcow2,file.filename=base.qcow2 b9", "bitmap --add --image-opts -f qcow2 driver=qcow2,file.filename=base.qcow2 b9",
            "dd --image-opts if=driver=qcow2,file.filename=top.qcow2 of=dd.raw bs=64k count=40", "dd --image-opts -f qcow2 if=driver=qcow2,file.filename=top.qcow2 of=dd.raw",
        ]);

    /// <summary>qemu-img's --object: the secrets scripts pass (and throttle groups) are taken and checked; other definitions are refused in QEMU's words.</summary>
    private static IEnumerable<string> Objects =>
        new[]
        {
            "secret,id=s0,data=abc", "secret,id=s0,data=YWJj,format=base64", "secret,id=s0,file=text.txt", "foo,id=x", "secret,id=s0", "secret,data=abc", "secret,id=s0,file=nope.txt",
            "secret,id=s0,data=abc,bogus=1", "secret,id=s0,data=abc,format=hex", "throttle-group,id=t0,x-iops-total=100", "iothread,id=io0", "id=s0",
            "secret,id=1bad,data=1", "secret,id=s0,data=1 --object secret,id=s0,data=2",
        }.Select(o => $"info --object {o} base.qcow2")
        .Concat(["check --object secret,id=s0,data=abc base.qcow2", "create --object secret,id=s0,data=abc -f qcow2 new.qcow2 1M", "convert --object secret,id=s0,data=abc -O raw base.qcow2 out.raw",
            "compare --object foo,id=x base.qcow2 comp.qcow2", "create --object foo,id=x -f qcow2 new.qcow2 1M"]);

    /// <summary>
    /// convert --salvage over an image with an L2 pointer QEMU cannot use: the sectors it maps are
    /// copied as zeros with qemu-img's warnings, line for line; only the first line, the image's
    /// corruption in the words of each tool's qcow2 driver, differs.
    /// </summary>
    private static IEnumerable<string> Salvage =>
    [
        "convert --salvage -O raw badl2.qcow2 out.raw" + WordingDiffers, "convert -q --salvage -O raw badl2.qcow2 out.raw" + WordingDiffers,
        "convert --salvage -O qcow2 badl2.qcow2 out.qcow2" + WordingDiffers, "convert -O raw badl2.qcow2 out.raw" + WordingDiffers, "info badl2.qcow2",
    ];

    /// <summary>
    /// The same -o values through every verb that takes them: each verb checks them where and as
    /// qemu-img does (create and convert as qcow2_co_create, convert's after "DST: error while
    /// converting qcow2:", measure as qcow2_measure, amend as qcow2_amend_options).
    /// </summary>
    private static IEnumerable<string> OptionValues =>
        new[]
        {
            "compat=2", "cluster_size=3k", "cluster_size=x", "refcount_bits=3", "refcount_bits=x", "lazy_refcounts=maybe", "preallocation=bogus", "compression_type=foo",
            "extended_l2=maybe", "compat=0.10,lazy_refcounts=on", "cluster_size=4k,extended_l2=on", "compat=0.10,refcount_bits=8", "data_file_raw=on", "compat=0.10,compression_type=zstd",
            "compat=0.10,extended_l2=on", "size=1x", "cluster_size=4k,bogus=1", "cluster_size=64k",
        }.SelectMany(o => new[] { $"convert -O qcow2 -o {o} base.qcow2 out.qcow2", $"measure -O qcow2 -o {o} base.qcow2", $"amend -o {o} base.qcow2", $"create -f qcow2 -o {o} new.qcow2 1M" })
        .Concat(["measure -O raw -o nocow=maybe base.qcow2", "measure -O raw -o preallocation=bogus base.qcow2", "measure -O raw -o bogus=1 base.qcow2", "measure --size 1G -O qcow2 -o bogus=1",
            "create -f qcow2 -o size=2M new.qcow2 1M", "convert -O qcow2 -o preallocation=metadata -B base.qcow2 -F qcow2 top.qcow2 out.qcow2"]);
}
