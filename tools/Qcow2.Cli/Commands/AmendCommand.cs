using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 amend [-f qcow2] [-q] -o OPTIONS FILE — change format options in place, as qemu-img amend.</summary>
internal static class AmendCommand
{
    public const string Usage = "qcow2 amend [-f qcow2] [-p] [-q] [--force] -o compat=0.10|1.1,refcount_bits=N,lazy_refcounts=on|off,size=SIZE,data_file=NAME,data_file_raw=off FILE";

    private static readonly string[] Amendable = ["compat", "refcount_bits", "lazy_refcounts", "size", "data_file", "data_file_raw"];

    private static readonly string[] CreateOnly =
        ["cluster_size", "preallocation", "extended_l2", "compression_type", "encryption", "encrypt.format", "backing_file", "backing_fmt"];

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "-o"], ["-p", "-q", "--force"], ImageArguments.First);
        if (line.Values("-o").Count == 0)
        {
            throw QemuArgumentError.WithHelpHint("Must specify options (-o)");
        }

        line.ExpectPositionals(1, 1, Usage);
        FileArguments.CheckInput(line.Positionals[0]);
        if ((line.Value("-f") ?? DiskSource.ProbeFormat(line.Positionals[0])) is var format && format != "qcow2")
        {
            if (line.Value("-f") is null && format == "raw")
            {
                ImageOptions.WarnProbedRaw(line.Positionals[0]);
            }

            throw new QemuArgumentError($"Format driver '{format}' does not support option amendment");
        }

        var values = Parse(line.Values("-o"));
        if (Qcow2OptionValues.AmendCompatProblem(values.GetValueOrDefault("compat")) is { } compatProblem)
        {
            throw new QemuArgumentError(compatProblem);
        }

        var options = new Qcow2AmendOptions
        {
            Version = values.GetValueOrDefault("compat") is { } compat ? Qcow2OptionValues.Version(compat) : null,
            RefcountBits = values.GetValueOrDefault("refcount_bits") is { } bits ? Qcow2OptionValues.RefcountBits(bits) : null,
            LazyRefcounts = values.GetValueOrDefault("lazy_refcounts") is { } lazy ? Qcow2OptionValues.OnOff("lazy_refcounts", lazy) : null,
            Size = values.GetValueOrDefault("size") is { } size ? Sizes.ParseParameter("size", size) : null,
            AllowShrink = true, // qemu-img amend -o size= shrinks without asking (resize is the verb that asks)
            DataFile = values.GetValueOrDefault("data_file"),
            DataFileRaw = values.GetValueOrDefault("data_file_raw") is { } raw ? Qcow2OptionValues.OnOff("data_file_raw", raw) : null,
        };
        Qcow2Image.Amend(line.Positionals[0], options, () => ImageOptions.For(line, line.Positionals[0], writable: true));
        return 0;
    }

    private static Dictionary<string, string> Parse(IEnumerable<string> optionStrings)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        var pairs = optionStrings.SelectMany(o => o.Split(',', StringSplitOptions.RemoveEmptyEntries))
            .Select(pair => pair.IndexOf('=', StringComparison.Ordinal) is var equals and >= 0 ? (Key: pair[..equals], Value: pair[(equals + 1)..]) : (Key: pair, Value: "on")).ToList();

        // qemu-img adds the hint only when the whole string reads as creation options.
        var all = pairs.GroupBy(p => p.Key).ToDictionary(g => g.Key, g => g.Last().Value, StringComparer.Ordinal);
        var readsAsCreation = all.Keys.All(k => CreateOnly.Contains(k) || Amendable.Contains(k)) && Qcow2OptionValues.SyntaxProblem(all.GetValueOrDefault) is null;
        foreach (var (key, value) in pairs)
        {
            if (key is "help" or "?")
            {
                throw new UsageException("amendable options: " + string.Join(", ", Amendable));
            }

            if (CreateOnly.Contains(key))
            {
                throw new QemuArgumentError(readsAsCreation ? $"Invalid parameter '{key}'\nThis option is only supported for image creation" : $"Invalid parameter '{key}'");
            }

            if (!Amendable.Contains(key))
            {
                throw new QemuArgumentError($"Invalid parameter '{key}'");
            }

            values[key] = value;
        }

        return values.Count > 0 ? values : throw QemuArgumentError.WithHelpHint("Must specify options (-o)");
    }
}
