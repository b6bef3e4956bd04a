using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 amend [-f qcow2] [-q] -o OPTIONS FILE — change format options in place, as qemu-img amend.</summary>
internal static class AmendCommand
{
    public const string Usage = "qcow2 amend [-f qcow2] [-p] [-q] -o compat=0.10|1.1,refcount_bits=N,lazy_refcounts=on|off,size=SIZE FILE";

    private static readonly string[] Amendable = ["compat", "refcount_bits", "lazy_refcounts", "size"];

    private static readonly string[] CreateOnly =
        ["cluster_size", "preallocation", "extended_l2", "compression_type", "encryption", "encrypt.format", "data_file", "data_file_raw", "backing_file", "backing_fmt"];

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-o"], ["-p", "-q"]);
        line.ExpectPositionals(1, 1, Usage);
        if (line.Value("-f") is { } format && format != "qcow2")
        {
            throw new UsageException($"only qcow2 images can be amended, not '{format}'");
        }

        var values = Parse(line.Values("-o"));
        var options = new Qcow2AmendOptions
        {
            Version = values.GetValueOrDefault("compat") is { } compat ? Qcow2OptionValues.Version(compat) : null,
            RefcountBits = values.GetValueOrDefault("refcount_bits") is { } bits ? Qcow2OptionValues.RefcountBits(bits) : null,
            LazyRefcounts = values.GetValueOrDefault("lazy_refcounts") is { } lazy ? Qcow2OptionValues.OnOff("lazy_refcounts", lazy) : null,
            Size = values.GetValueOrDefault("size") is { } size ? Sizes.ParseParameter("size", size) : null,
        };
        FileArguments.CheckInput(line.Positionals[0]);
        Qcow2Image.Amend(line.Positionals[0], options, () => ImageOptions.For(line, line.Positionals[0], writable: true));
        return 0;
    }

    private static Dictionary<string, string> Parse(IEnumerable<string> optionStrings)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in optionStrings.SelectMany(o => o.Split(',', StringSplitOptions.RemoveEmptyEntries)))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var key = equals < 0 ? pair : pair[..equals];
            if (key is "help" or "?")
            {
                throw new UsageException("amendable options: " + string.Join(", ", Amendable));
            }

            if (CreateOnly.Contains(key))
            {
                throw new UsageException($"Invalid parameter '{key}'. This option is only supported for image creation");
            }

            if (!Amendable.Contains(key))
            {
                throw new UsageException($"Invalid parameter '{key}'");
            }

            values[key] = equals < 0 ? "on" : pair[(equals + 1)..];
        }

        return values.Count > 0 ? values : throw new UsageException("Must specify options (-o)");
    }
}
