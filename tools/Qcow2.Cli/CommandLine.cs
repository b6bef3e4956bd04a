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
    /// </summary>
    public static CommandLine Parse(IReadOnlyList<string> args, string[] valued, string[] flags)
    {
        valued = [.. valued, ImageOptions.BackingPolicyOption];
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

        return result;
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
