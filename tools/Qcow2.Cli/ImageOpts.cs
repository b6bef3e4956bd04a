using System.Globalization;

namespace QcowDedup.Cli;

/// <summary>
/// qemu-img's <c>--image-opts</c>: an image named by QEMU's option string instead of a file name,
/// e.g. <c>driver=qcow2,file.filename=disk.qcow2,force-share=on</c> (",," is a literal comma; a
/// leading item without "=" is the implied key "file"). What a file-based tool can honour is
/// honoured: the format (<c>driver</c>), the file (<c>file.filename</c>, or <c>filename</c> with
/// <c>driver=file</c>) and <c>force-share</c>. QEMU's tuning options (cache sizes, overlap checks,
/// discard passing, locking and AIO modes) are checked as QEMU checks them and otherwise change
/// nothing here: the library sizes its own caches and always checks metadata overlaps.
/// Everything else is refused in QEMU's words, as "Could not open 'OPTIONS': …".
/// </summary>
internal static class ImageOpts
{
    /// <summary>An image the option string names.</summary>
    /// <param name="Path">The file.</param>
    /// <param name="Format">The format to open it as (null: probe, as qemu-img without a driver).</param>
    /// <param name="ForceShare">force-share=on (true), force-share=off (false), or not given.</param>
    /// <param name="ReadOnly">read-only=on: a verb that would write the image refuses it.</param>
    public sealed record ImageSpec(string Path, string? Format, bool? ForceShare, bool ReadOnly);

    private enum Kind
    {
        Text,
        Bool,
        Size,
        Number,
        NodeName,
        Discard,
        DetectZeroes,
        OverlapCheck,
        OnOffAuto,
        Aio,
    }

    /// <summary>Options every block node takes (QEMU's bdrv_runtime_opts and the open flags).</summary>
    private static readonly Dictionary<string, Kind> NodeOptions = new(StringComparer.Ordinal)
    {
        ["node-name"] = Kind.NodeName,
        ["read-only"] = Kind.Bool,
        ["auto-read-only"] = Kind.Bool,
        ["force-share"] = Kind.Bool,
        ["discard"] = Kind.Discard,
        ["detect-zeroes"] = Kind.DetectZeroes,
        ["cache.direct"] = Kind.Bool,
        ["cache.no-flush"] = Kind.Bool,
    };

    /// <summary>qcow2's runtime options in QEMU 7.2 (qcow2_runtime_opts).</summary>
    private static readonly Dictionary<string, Kind> Qcow2Options = new(StringComparer.Ordinal)
    {
        ["lazy-refcounts"] = Kind.Bool,
        ["pass-discard-request"] = Kind.Bool,
        ["pass-discard-snapshot"] = Kind.Bool,
        ["pass-discard-other"] = Kind.Bool,
        ["overlap-check"] = Kind.OverlapCheck,
        ["overlap-check.template"] = Kind.OverlapCheck,
        ["overlap-check.main-header"] = Kind.Bool,
        ["overlap-check.active-l1"] = Kind.Bool,
        ["overlap-check.active-l2"] = Kind.Bool,
        ["overlap-check.refcount-table"] = Kind.Bool,
        ["overlap-check.refcount-block"] = Kind.Bool,
        ["overlap-check.snapshot-table"] = Kind.Bool,
        ["overlap-check.inactive-l1"] = Kind.Bool,
        ["overlap-check.inactive-l2"] = Kind.Bool,
        ["overlap-check.bitmap-directory"] = Kind.Bool,
        ["cache-size"] = Kind.Size,
        ["l2-cache-size"] = Kind.Size,
        ["l2-cache-entry-size"] = Kind.Size,
        ["refcount-cache-size"] = Kind.Size,
        ["cache-clean-interval"] = Kind.Number,
        ["encrypt.key-secret"] = Kind.Text,
        ["encrypt.format"] = Kind.Text,
    };

    /// <summary>The 'file' protocol's options (raw-posix's raw_runtime_opts).</summary>
    private static readonly Dictionary<string, Kind> FileOptions = new(StringComparer.Ordinal)
    {
        ["filename"] = Kind.Text,
        ["locking"] = Kind.OnOffAuto,
        ["aio"] = Kind.Aio,
        ["aio-max-batch"] = Kind.Number,
        ["drop-cache"] = Kind.Bool,
        ["x-check-cache-dropped"] = Kind.Bool,
        ["pr-manager"] = Kind.Text,
    };

    /// <summary>The formats an option string may name: qemu-img's driver names this tool reads.</summary>
    private static readonly string[] Formats = ["qcow2", "raw", "file", .. QcowDedup.Qcow2.DiscUtils.ForeignDisks.Formats];

    [ThreadStatic]
    private static Dictionary<string, string>? s_shownNames;

    [ThreadStatic]
    private static HashSet<string>? s_readOnly;

    /// <summary>Forgets the option strings of an earlier command line on this thread.</summary>
    public static void Reset()
    {
        s_shownNames = null;
        s_readOnly = null;
    }

    /// <summary>Refuses to open for writing a file its option string said read-only=on, as QEMU refuses it.</summary>
    public static void CheckWritable(string path)
    {
        if (s_readOnly?.Contains(path) == true)
        {
            throw new IOException($"Could not open '{path}': Block node is read-only");
        }
    }

    /// <summary>
    /// A failure message with the file name an option string resolved to shown as the option
    /// string, where qemu-img's message starts: "Could not open 'driver=…': Could not open 'disk.qcow2': …".
    /// </summary>
    public static string ShowAsGiven(string message)
    {
        foreach (var (path, given) in s_shownNames ?? [])
        {
            var prefix = $"Could not open '{path}'";
            if (message.StartsWith(prefix, StringComparison.Ordinal))
            {
                return $"Could not open '{given}'{message[prefix.Length..]}";
            }
        }

        return message;
    }

    /// <summary>The option string that named <paramref name="path"/>, or the path itself when it was named directly.</summary>
    public static string AsGiven(string path) => s_shownNames?.GetValueOrDefault(path) ?? path;

    /// <summary>Parses and checks an option string; the file it names is remembered for <see cref="ShowAsGiven"/>.</summary>
    /// <param name="given">The option string.</param>
    /// <param name="exitCode">qemu-img's exit code for a refusal (compare: 2).</param>
    public static ImageSpec Resolve(string given, int exitCode = 1) => WithExitCode(exitCode, () => ResolveCore(given));

    private static ImageSpec ResolveCore(string given)
    {
        var options = Parse(given, impliedKey: "file");
        if (options.Count == 0)
        {
            throw Refused(given, "Must specify either driver or file");
        }

        var driver = options.GetValueOrDefault("driver");
        if (driver is not null && !Formats.Contains(driver))
        {
            throw Refused(given, $"Unknown driver '{driver}'");
        }

        if (options.TryGetValue("file", out var node))
        {
            throw Refused(given, $"Cannot find device='{node}' nor node-name='{node}'");
        }

        string? path;
        if (driver == "file")
        {
            path = options.GetValueOrDefault("filename");
            CheckOptions(given, options, except: ["driver"], FileOptions.Concat(NodeOptions), "Block protocol 'file' doesn't support the option '{0}'");
        }
        else
        {
            var protocol = options.GetValueOrDefault("file.driver") ?? "file";
            if (protocol != "file")
            {
                throw Refused(given, $"the '{protocol}' protocol is not supported: only files (file.driver=file)");
            }

            path = options.GetValueOrDefault("file.filename");
            if (path is null)
            {
                throw Refused(given, "A block device must be specified for \"file\"");
            }

            var fileOptions = options.Where(o => o.Key.StartsWith("file.", StringComparison.Ordinal)).ToDictionary(o => o.Key["file.".Length..], o => o.Value, StringComparer.Ordinal);
            CheckOptions(given, fileOptions, except: ["driver"], FileOptions.Concat(NodeOptions), "Block protocol 'file' doesn't support the option '{0}'");
            var own = options.Where(o => !o.Key.StartsWith("file.", StringComparison.Ordinal)).ToDictionary(StringComparer.Ordinal);
            var known = driver == "qcow2" || driver is null ? NodeOptions.Concat(Qcow2Options) : NodeOptions;
            CheckOptions(given, own, except: ["driver"], known, $"Block format '{driver ?? "qcow2"}' does not support the option '{{0}}'");
            CheckCacheSizes(given, own);
            CheckCombinations(given, options);
        }

        if (string.IsNullOrEmpty(path))
        {
            throw Refused(given, "The 'file' block driver requires a file name");
        }

        (s_shownNames ??= new(StringComparer.Ordinal))[path] = given;
        var readOnly = options.TryGetValue("read-only", out var ro) && IsOn(ro);
        if (readOnly)
        {
            (s_readOnly ??= new(StringComparer.Ordinal)).Add(path);
        }

        bool? forceShare = options.TryGetValue("force-share", out var share) ? IsOn(share) : null;
        return new ImageSpec(path, driver is "file" ? "raw" : driver, forceShare, readOnly);
    }

    /// <summary>
    /// Checks <c>--object</c> definitions, in order, as qemu-img does. Secrets (what qemu-img
    /// scripts pass objects for) and throttle groups are taken; they configure nothing this tool
    /// opens, since it neither decrypts images nor throttles through groups.
    /// </summary>
    /// <param name="definitions">The --object values, in order.</param>
    /// <param name="exitCode">qemu-img's exit code for a refusal (compare: 2).</param>
    public static void CheckObjects(IEnumerable<string> definitions, int exitCode = 1) => WithExitCode(exitCode, () =>
    {
        CheckObjectsCore(definitions);
        return true;
    });

    /// <summary>Runs <paramref name="check"/>, its refusals carrying the verb's exit code.</summary>
    private static T WithExitCode<T>(int exitCode, Func<T> check)
    {
        try
        {
            return check();
        }
        catch (QemuArgumentError error) when (exitCode != error.ExitCode)
        {
            throw new QemuArgumentError(error.Message, exitCode);
        }
    }

    private static void CheckObjectsCore(IEnumerable<string> definitions)
    {
        var secrets = new HashSet<string>(StringComparer.Ordinal);
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var definition in definitions)
        {
            var options = Parse(definition, impliedKey: "qom-type");
            var type = options.GetValueOrDefault("qom-type") ?? throw new QemuArgumentError("Parameter 'qom-type' is missing");
            CheckObjectType(type);
            var id = options.GetValueOrDefault("id") ?? throw new QemuArgumentError("Parameter 'id' is missing");
            if (id.Length == 0 || !char.IsAsciiLetter(id[0]) || id.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not ('-' or '.' or '_')))
            {
                throw new QemuArgumentError("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
            }

            if (!ids.Add(id))
            {
                throw new QemuArgumentError($"attempt to add duplicate property '{id}' to object (type 'container')");
            }

            if (type == "throttle-group")
            {
                CheckThrottleGroup(options);
                continue;
            }

            CheckSecret(options, secrets);
            secrets.Add(id);
        }
    }

    /// <summary>QEMU's answers for object types: user-creatable in qemu-img, other QOM types, unknown names.</summary>
    private static void CheckObjectType(string type)
    {
        string[] creatable = ["authz-list", "authz-list-file", "authz-simple", "main-loop", "pr-manager-helper", "secret", "secret_keyring", "thread-context", "throttle-group", "tls-cipher-suites", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509"];
        string[] otherFamilies = ["iothread", "memory-backend-", "rng-", "filter-", "cryptodev-", "colo-compare", "input-", "can-", "dbus-vmstate", "sev-guest", "x-remote-object"];
        if (!creatable.Contains(type))
        {
            throw new QemuArgumentError(otherFamilies.Any(f => type.StartsWith(f, StringComparison.Ordinal)) ? $"invalid object type: {type}" : $"Parameter 'qom-type' does not accept value '{type}'");
        }

        if (type is not ("secret" or "throttle-group"))
        {
            throw new QemuArgumentError($"--object {type} is not supported: this tool takes secret and throttle-group objects");
        }
    }

    private static void CheckThrottleGroup(Dictionary<string, string> options)
    {
        foreach (var (key, value) in options.Where(o => o.Key is not ("qom-type" or "id")))
        {
            if (!key.StartsWith("x-", StringComparison.Ordinal) && !key.StartsWith("limits.", StringComparison.Ordinal))
            {
                throw new QemuArgumentError($"Parameter '{key}' is unexpected");
            }

            if (!long.TryParse(value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _))
            {
                throw new QemuArgumentError($"Parameter '{key}' expects integer");
            }
        }
    }

    private static void CheckSecret(Dictionary<string, string> options, HashSet<string> earlierSecrets)
    {
        string[] secretKeys = ["qom-type", "id", "data", "file", "format", "keyid", "iv", "loaded"];
        if (options.Keys.FirstOrDefault(k => !secretKeys.Contains(k)) is { } unexpected)
        {
            throw new QemuArgumentError($"Parameter '{unexpected}' is unexpected");
        }

        if (options.GetValueOrDefault("format") is { } format && format is not ("raw" or "base64"))
        {
            throw new QemuArgumentError($"Parameter 'format' does not accept value '{format}'");
        }

        var data = options.GetValueOrDefault("data");
        var file = options.GetValueOrDefault("file");
        if (data is not null && file is not null)
        {
            throw new QemuArgumentError("'file' and 'data' are mutually exclusive");
        }

        if (data is null && file is null)
        {
            throw new QemuArgumentError("Either 'file' or 'data' must be provided");
        }

        if (file is not null && !File.Exists(file))
        {
            throw new QemuArgumentError($"Unable to read {file}: Failed to open file “{file}”: No such file or directory");
        }

        if (options.GetValueOrDefault("keyid") is { } keyId && !earlierSecrets.Contains(keyId))
        {
            throw new QemuArgumentError($"No secret with id '{keyId}'");
        }
    }

    /// <summary>
    /// QEMU's key=value list: items split at single commas, ",," a literal comma, the first item
    /// without "=" the implied key; a later key overrides an earlier one.
    /// </summary>
    private static Dictionary<string, string> Parse(string text, string impliedKey)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        var items = new List<string>();
        var item = new System.Text.StringBuilder();
        for (var i = 0; i < text.Length; i++)
        {
            if (text[i] == ',')
            {
                if (i + 1 < text.Length && text[i + 1] == ',')
                {
                    item.Append(',');
                    i++;
                    continue;
                }

                items.Add(item.ToString());
                item.Clear();
                continue;
            }

            item.Append(text[i]);
        }

        if (item.Length > 0)
        {
            items.Add(item.ToString()); // a trailing comma ends the list, as in QEMU
        }

        for (var i = 0; i < items.Count; i++)
        {
            var equals = items[i].IndexOf('=', StringComparison.Ordinal);
            if (equals < 0)
            {
                if (i == 0)
                {
                    options[impliedKey] = items[i];
                    continue;
                }

                options[items[i]] = "on"; // QEMU's "flag" form
                continue;
            }

            options[items[i][..equals]] = items[i][(equals + 1)..];
        }

        return options;
    }

    private static void CheckOptions(string given, Dictionary<string, string> options, string[] except, IEnumerable<KeyValuePair<string, Kind>> known, string unknownFormat)
    {
        var kinds = known.ToDictionary(StringComparer.Ordinal);
        foreach (var (key, value) in options)
        {
            if (except.Contains(key))
            {
                continue;
            }

            if (!kinds.TryGetValue(key, out var kind))
            {
                throw Refused(given, string.Format(CultureInfo.InvariantCulture, unknownFormat, key));
            }

            if (Problem(key, value, kind) is { } problem)
            {
                throw Refused(given, problem);
            }
        }
    }

    private static bool IsOn(string value) => value is "on" or "yes" or "true";

    /// <summary>What QEMU says about a value of the wrong kind, or null when it is right.</summary>
    private static string? Problem(string key, string value, Kind kind) => kind switch
    {
        Kind.Bool when value is not ("on" or "off" or "yes" or "no" or "true" or "false") => $"Parameter '{key}' expects 'on' or 'off'",
        Kind.Size when Sizes.TryParse(value, out _) != SizeSyntax.Valid =>
            $"Parameter '{key}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.",
        Kind.Number when !ulong.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out _) => $"Parameter '{key}' expects a number",
        Kind.NodeName when value.Length == 0 || !char.IsAsciiLetter(value[0]) || value.Length > 31 || value.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not ('-' or '_' or '.')) => $"Invalid node-name: '{value}'",
        Kind.Discard when value is not ("ignore" or "off" or "unmap" or "on") => "Invalid discard option",
        Kind.DetectZeroes when value is not ("off" or "on" or "unmap") => $"invalid parameter value: {value}",
        Kind.OnOffAuto when value is not ("off" or "on" or "auto") => $"invalid parameter value: {value}",
        Kind.Aio when value is not ("threads" or "native" or "io_uring") => $"invalid parameter value: {value}",
        Kind.OverlapCheck when value is not ("none" or "constant" or "cached" or "all") =>
            $"Unsupported value '{value}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all",
        _ => null,
    };

    /// <summary>QEMU's checks of option pairs that are each well-formed, in its words.</summary>
    private static void CheckCombinations(string given, Dictionary<string, string> options)
    {
        if (options.GetValueOrDefault("detect-zeroes") == "unmap" && options.GetValueOrDefault("discard") is not ("unmap" or "on"))
        {
            throw Refused(given, "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
        }

        if (options.GetValueOrDefault("overlap-check") is { } mode && options.GetValueOrDefault("overlap-check.template") is { } template && mode != template)
        {
            throw Refused(given, $"Conflicting values for qcow2 options 'overlap-check' ('{mode}') and 'overlap-check.template' ('{template}')");
        }

        if (options.GetValueOrDefault("node-name") is { } node && options.GetValueOrDefault("file.node-name") == node)
        {
            throw Refused(given, $"Duplicate nodes with node-name='{node}'");
        }

        if (options.GetValueOrDefault("file.aio") == "native" && !(options.TryGetValue("file.cache.direct", out var direct) ? IsOn(direct) : options.TryGetValue("cache.direct", out var top) && IsOn(top)))
        {
            throw Refused(given, "aio=native was specified, but it requires cache.direct=on, which was not specified.");
        }

        if (options.GetValueOrDefault("file.pr-manager") is { } manager)
        {
            throw Refused(given, $"No persistent reservation manager with id '{manager}'");
        }
    }

    /// <summary>qcow2's checks of the cache sizes against each other (read_cache_sizes), before the image's own.</summary>
    private static void CheckCacheSizes(string given, Dictionary<string, string> options)
    {
        long? Size(string key) => options.TryGetValue(key, out var text) && Sizes.TryParse(text, out var bytes) == SizeSyntax.Valid ? bytes : null;
        var (total, l2, refcount) = (Size("cache-size"), Size("l2-cache-size"), Size("refcount-cache-size"));
        if (total is not null && l2 is not null && refcount is not null)
        {
            throw Refused(given, "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
        }

        if (total is not null && l2 > total)
        {
            throw Refused(given, "l2-cache-size may not exceed cache-size");
        }

        if (total is not null && refcount > total)
        {
            throw Refused(given, "refcount-cache-size may not exceed cache-size");
        }

        if (Size("l2-cache-entry-size") is { } entry && (entry < 512 || entry > (2 << 20) || (entry & (entry - 1)) != 0))
        {
            throw Refused(given, "L2 cache entry size must be a power of two between 512 and the cluster size");
        }
    }

    private static QemuArgumentError Refused(string given, string reason) => new($"Could not open '{given}': {reason}");
}
