namespace QcowDedup.Cli;

/// <summary>A wrong command line; reported as "qcow2 VERB: message" with exit code 1.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// A failure qemu-img reports in its own words (a wrong argument, a refused operation), reported
/// the same way: "qcow2: " and the
/// message, exit code 1. A message of several lines carries its own prefixes where qemu-img's
/// lines have them (error_report) and none where they do not (error_printf), so stderr is the same.
/// </summary>
internal sealed class QemuArgumentError(string message, int exitCode = 1) : Exception(message)
{
    /// <summary>qemu-img's exit code for it: 1, but 2 where compare reports it as a failure to compare.</summary>
    public int ExitCode { get; } = exitCode;

    /// <summary>qemu-img's two lines for an option it does not know or a value it lacks.</summary>
    public static QemuArgumentError WithHelpHint(string message) => new($"{message}\nTry 'qcow2 --help' for more information");
}

/// <summary>Which positional arguments of a verb name images, for qemu-img's --image-opts.</summary>
internal enum ImageArguments
{
    /// <summary>Neither --image-opts nor --object.</summary>
    None,

    /// <summary>--object only (create).</summary>
    ObjectsOnly,

    /// <summary>The first positional (most verbs).</summary>
    First,

    /// <summary>The first two (compare: -f for the first, -F for the second).</summary>
    FirstTwo,

    /// <summary>All but the last (convert's sources); the last with --target-image-opts.</summary>
    SourcesAndTarget,

    /// <summary>The if= operand (dd).</summary>
    DdInput,
}

/// <summary>
/// Parses a qemu-img style command line: short options (-f raw, -fraw), long options
/// (--output=json, --output json), repeatable options (-c CMD -c CMD), and positional arguments.
/// "--" ends option parsing.
/// </summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);
    private readonly List<(string Name, string? Value)> _ordered = [];

    private CommandLine(List<string> positionals) => Positionals = positionals;

    public IReadOnlyList<string> Positionals { get; }

    /// <summary>
    /// Parses <paramref name="args"/>. Options listed in <paramref name="valued"/> take a value,
    /// those in <paramref name="flags"/> do not; every verb also takes <see cref="ImageOptions.BackingPolicyOption"/>.
    /// A verb that names which positionals are images (<paramref name="images"/>) also takes
    /// qemu-img's <c>--object</c> and <c>--image-opts</c>: its image arguments are then option strings,
    /// replaced here by the files they name, with <c>-f</c> (or <c>-F</c>, <c>-O</c>) and <c>-U</c> set as they say.
    /// </summary>
    public static CommandLine Parse(IReadOnlyList<string> args, string[] valued, string[] flags, ImageArguments images = ImageArguments.None)
    {
        valued = [.. valued, ImageOptions.BackingPolicyOption, .. images == ImageArguments.None ? Array.Empty<string>() : ["--object"]];
        var verbFlags = flags;
        flags = images switch
        {
            ImageArguments.None or ImageArguments.ObjectsOnly => flags,
            ImageArguments.SourcesAndTarget => [.. flags, "--image-opts", "--target-image-opts"],
            _ => [.. flags, "--image-opts"],
        };
        var positionals = new List<string>();
        var result = new CommandLine(positionals);
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (arg == "--")
            {
                positionals.AddRange(args.Skip(i + 1));
                break;
            }

            if (arg.StartsWith("--", StringComparison.Ordinal))
            {
                var equals = arg.IndexOf('=', StringComparison.Ordinal);
                var name = equals < 0 ? arg : arg[..equals];
                if (valued.Contains(name))
                {
                    var value = equals >= 0 ? arg[(equals + 1)..] : (++i < args.Count ? args[i] : throw QemuArgumentError.WithHelpHint($"missing argument for option '{arg}'"));
                    result.Add(name, value);
                }
                else if (flags.Contains(name) && equals < 0)
                {
                    result.AddFlag(name);
                }
                else
                {
                    throw QemuArgumentError.WithHelpHint($"unrecognized option '{arg}'");
                }
            }
            else if (arg.Length > 1 && arg[0] == '-')
            {
                for (var j = 1; j < arg.Length; j++)
                {
                    var name = "-" + arg[j];
                    if (valued.Contains(name))
                    {
                        var value = j + 1 < arg.Length ? arg[(j + 1)..] : (++i < args.Count ? args[i] : throw QemuArgumentError.WithHelpHint($"missing argument for option '{name}'"));
                        result.Add(name, value);
                        break;
                    }

                    if (!flags.Contains(name))
                    {
                        throw QemuArgumentError.WithHelpHint($"unrecognized option '{arg}'");
                    }

                    result.AddFlag(name);
                }
            }
            else
            {
                positionals.Add(arg);
            }
        }

        if (images != ImageArguments.None)
        {
            result.ApplyImageOpts(images, verbFlags.Contains("-U"));
        }

        return result;
    }

    /// <summary>Checks the --object definitions and resolves the image arguments given as option strings.</summary>
    private void ApplyImageOpts(ImageArguments images, bool takesForceShare)
    {
        var exitCode = images == ImageArguments.FirstTwo ? 2 : 1; // compare's failures are 2
        ImageOpts.CheckObjects(Values("--object"), exitCode);

        var positionals = (List<string>)Positionals;
        if (Has("--image-opts"))
        {
            if (Has("-f") || Has("--format") || (images == ImageArguments.FirstTwo && Has("-F")))
            {
                throw new QemuArgumentError("--image-opts and --format are mutually exclusive", exitCode);
            }

            IEnumerable<(int Index, string FormatOption)> named = images switch
            {
                ImageArguments.First => positionals.Count > 0 ? [(0, "-f")] : [],
                ImageArguments.FirstTwo => positionals.Take(2).Select((_, i) => (i, i == 0 ? "-f" : "-F")),
                ImageArguments.SourcesAndTarget => positionals.SkipLast(1).Select((_, i) => (i, "-f")),
                ImageArguments.DdInput => positionals.FindIndex(p => p.StartsWith("if=", StringComparison.Ordinal)) is var at and >= 0 ? [(at, "-f")] : [],
                _ => [],
            };
            foreach (var (index, formatOption) in named.ToList())
            {
                Resolve(index, formatOption, images == ImageArguments.DdInput ? "if=" : string.Empty, takesForceShare, exitCode);
            }
        }

        if (Has("--target-image-opts") && positionals.Count > 0)
        {
            if (!Has("-n"))
            {
                throw new QemuArgumentError("--target-image-opts requires use of -n flag");
            }

            if (Has("-O"))
            {
                throw new QemuArgumentError("--image-opts and --format are mutually exclusive");
            }

            Resolve(positionals.Count - 1, "-O", string.Empty, takesForceShare: false, exitCode);
        }
    }

    /// <summary>Replaces one image argument (after <paramref name="prefix"/>) by the file its option string names.</summary>
    private void Resolve(int index, string formatOption, string prefix, bool takesForceShare, int exitCode)
    {
        var positionals = (List<string>)Positionals;
        var given = positionals[index][prefix.Length..];
        var spec = ImageOpts.Resolve(given, exitCode);
        positionals[index] = prefix + spec.Path;
        if (spec.Format is { } format)
        {
            if (Value(formatOption) is { } earlier && earlier != format)
            {
                throw new QemuArgumentError($"Could not open '{given}': every source image must have the same driver here (an earlier one is {earlier})", exitCode);
            }

            if (Value(formatOption) is null)
            {
                Add(formatOption, format);
            }
        }

        if (spec.ForceShare == false && Has("-U"))
        {
            throw new QemuArgumentError("--force-share/-U conflicts with image options", exitCode);
        }

        if (spec.ForceShare == true && !Has("-U"))
        {
            if (!takesForceShare)
            {
                throw new QemuArgumentError($"Could not open '{given}': force-share=on can only be used with read-only images", exitCode);
            }

            AddFlag("-U");
        }
    }

    /// <summary>Every option in the order given, with its value (null for a flag): for verbs whose actions run in that order.</summary>
    public IReadOnlyList<(string Name, string? Value)> Ordered => _ordered;

    public bool Has(string name) => _flags.Contains(name) || _values.ContainsKey(name);

    public string? Value(string name) => _values.TryGetValue(name, out var list) ? list[^1] : null;

    public IReadOnlyList<string> Values(string name) => _values.TryGetValue(name, out var list) ? list : [];

    /// <summary>The value of the first of several spellings of an option that was given (e.g. "--output" or "-O").</summary>
    public string? Value(params string[] names) => names.Select(n => Value(n)).FirstOrDefault(v => v is not null);

    /// <summary>Checks the number of positional arguments.</summary>
    public void ExpectPositionals(int min, int max, string usage)
    {
        if (Positionals.Count < min || Positionals.Count > max)
        {
            throw new UsageException(Positionals.Count < min ? $"missing arguments; usage: {usage}" : $"too many arguments; usage: {usage}");
        }
    }

    private void AddFlag(string name)
    {
        _flags.Add(name);
        _ordered.Add((name, null));
    }

    private void Add(string name, string value)
    {
        _ordered.Add((name, value));
        if (!_values.TryGetValue(name, out var list))
        {
            _values[name] = list = [];
        }

        list.Add(value);
    }
}
