using System.Globalization;
using System.Text;
using System.Text.Json;
using QcowDedup.Qcow2.Dedup;
using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>qcow2 info [-f FMT] [--output human|json] [--backing-chain] FILE</summary>
internal static class InfoCommand
{
    public const string Usage = "qcow2 info [-f FMT] [--output human|json] [--backing-chain] [--dedup-details] FILE";

    public static int Run(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["-f", "--output"], ["--backing-chain", "--dedup-details", .. ImageOptions.ForceShareFlags], ImageArguments.First);
        line.ExpectPositionals(1, 1, Usage);
        var json = OutputMode.IsJson(line.Value("--output"));
        var path = line.Positionals[0];

        // Like qemu-img info (BDRV_O_NO_BACKING), the image is opened without its backing files:
        // info shows the name of a backing file that is missing or that the policy refuses.
        Qcow2OpenOptions Options() => ImageOptions.For(line, path) with { BackingFiles = BackingFileMode.Ignore }; // one per open: it carries the dedup extension
        using var source = Disks.Open(path, line.Value("-f"), Options());
        var layers = new List<LayerInfo>();
        string? problem = null;
        if (source.Image is { } image)
        {
            layers.Add(LayerInfo.From(image, path));
            if (line.Has("--backing-chain"))
            {
                var shownName = path;
                foreach (var link in Qcow2Image.ReadBackingChain(path, Options()).Skip(1))
                {
                    if (link.Problem is not null)
                    {
                        problem = $"Could not open backing file '{link.Name}' ({link.Path ?? "no local path"}): {link.Problem}";
                        break;
                    }

                    shownName = QemuPaths.Combine(shownName, link.Name);
                    layers.Add(LayerInfo.FromLink(link, shownName, Options()));
                }
            }
        }
        else
        {
            layers.Add(LayerInfo.Raw(path, source.Size, source.AllocatedBytes) with { Format = source.Format });
        }

        if (problem is not null && json)
        {
            throw new IOException(problem); // a script gets no partial chain
        }

        if (json)
        {
            var text = line.Has("--backing-chain")
                ? Json.Write(w =>
                {
                    w.WriteStartArray();
                    layers.ForEach(l => l.WriteJson(w));
                    w.WriteEndArray();
                })
                : Json.Write(layers[0].WriteJson);
            Console.Out.WriteLine(text);
        }
        else
        {
            Console.Out.Write(string.Join("\n", layers.Select(l => l.Human(line.Has("--dedup-details")))));
        }

        if (problem is not null)
        {
            Console.Error.WriteLine($"qcow2: {problem}");
            return 1;
        }

        return 0;
    }

    private sealed record LayerInfo(string FileName, string Format, long VirtualSize, long ActualSize, ImageInfo? Info, Qcow2Image? Image, string? FullBacking)
    {
        public static LayerInfo From(Qcow2Image image, string name)
        {
            var info = image.Info;
            var full = info.BackingFileName is { } backing ? QemuPaths.Combine(name, backing) : null;
            return new LayerInfo(name, "qcow2", info.VirtualSize, info.ActualSize, info, image, full);
        }

        /// <summary>A backing file, shown by the name QEMU gives it: its path combined with the name of the image above.</summary>
        public static LayerInfo FromLink(BackingChainLink link, string shownName, Qcow2OpenOptions options)
        {
            var path = link.Path ?? link.Name;
            if (link.Format == "qcow2")
            {
                using var image = Qcow2Image.Open(path, options);
                var info = image.Info;
                return new LayerInfo(shownName, "qcow2", info.VirtualSize, info.ActualSize, info, null, info.BackingFileName is { } backing ? QemuPaths.Combine(shownName, backing) : null);
            }

            using var raw = DiskSource.Open(path, "raw", options);
            return Raw(shownName, raw.Size, raw.AllocatedBytes);
        }

        /// <summary>A layer without qcow2 metadata (raw, or a format read through DiscUtils).</summary>
        public static LayerInfo Raw(string path, long size, long allocated) => new(path, "raw", size, allocated, null, null, null);

        /// <param name="dedupDetails">Also the dedup index's internals (info --dedup-details).</param>
        public string Human(bool dedupDetails)
        {
            var text = new StringBuilder();
            text.Append(CultureInfo.InvariantCulture, $"image: {FileName}\n");
            text.Append(CultureInfo.InvariantCulture, $"file format: {Format}\n");
            text.Append(CultureInfo.InvariantCulture, $"virtual size: {Sizes.Format(VirtualSize)} ({VirtualSize} bytes)\n");
            text.Append(CultureInfo.InvariantCulture, $"disk size: {Sizes.Format(ActualSize)}\n");
            if (Info is not { } info)
            {
                return text.ToString();
            }

            if (info.Encryption != EncryptionMethod.None)
            {
                text.Append("encrypted: yes\n");
            }

            text.Append(CultureInfo.InvariantCulture, $"cluster_size: {info.ClusterSize}\n");
            if (info.Dirty)
            {
                text.Append("cleanly shut down: no\n");
            }

            if (info.BackingFileName is { } backing)
            {
                text.Append(CultureInfo.InvariantCulture, $"backing file: {backing}");
                text.Append(FullBacking is { } full && full != backing ? $" (actual path: {full})\n" : "\n");
                if (info.BackingFormat is { } format)
                {
                    text.Append(CultureInfo.InvariantCulture, $"backing file format: {format}\n");
                }
            }

            if (Image?.Snapshots is { Count: > 0 } snapshots)
            {
                text.Append("Snapshot list:\n");
                text.Append(SnapshotTable.Header + "\n");
                foreach (var snapshot in snapshots)
                {
                    text.Append(SnapshotTable.Row(snapshot) + "\n");
                }
            }

            text.Append("Format specific information:\n");
            text.Append(CultureInfo.InvariantCulture, $"    compat: {info.Compat}\n");
            text.Append(CultureInfo.InvariantCulture, $"    compression type: {CompressionName(info.CompressionType)}\n");
            if (info.Version >= 3)
            {
                text.Append(CultureInfo.InvariantCulture, $"    lazy refcounts: {Bool(info.LazyRefcounts)}\n");
                if (Image?.Bitmaps is { Count: > 0 } bitmaps)
                {
                    text.Append("    bitmaps:\n");
                    for (var i = 0; i < bitmaps.Count; i++)
                    {
                        text.Append(CultureInfo.InvariantCulture, $"        [{i}]:\n            flags:\n");
                        var flags = FlagNames(bitmaps[i].Flags);
                        for (var f = 0; f < flags.Count; f++)
                        {
                            text.Append(CultureInfo.InvariantCulture, $"                [{f}]: {flags[f]}\n");
                        }

                        text.Append(CultureInfo.InvariantCulture, $"            name: {bitmaps[i].Name}\n            granularity: {bitmaps[i].Granularity}\n");
                    }
                }

                text.Append(CultureInfo.InvariantCulture, $"    refcount bits: {info.RefcountBits}\n");
                if (info.DataFile is { } dataFile)
                {
                    text.Append(CultureInfo.InvariantCulture, $"    data file: {dataFile}\n    data file raw: {Bool(info.DataFileRaw)}\n");
                }

                text.Append(CultureInfo.InvariantCulture, $"    corrupt: {Bool(info.Corrupt)}\n");
                text.Append(CultureInfo.InvariantCulture, $"    extended l2: {Bool(info.ExtendedL2)}\n");
            }
            else
            {
                text.Append(CultureInfo.InvariantCulture, $"    refcount bits: {info.RefcountBits}\n");
            }

            foreach (var note in UnknownFeatureNotes(info))
            {
                text.Append(CultureInfo.InvariantCulture, $"    {note}\n");
            }

            if (Image is { } image && image.GetExtension<DedupExtension>() is { State: not DedupIndexState.Absent })
            {
                text.Append(DedupInfo.Human(image.GetDedupStatistics(), image.ClusterSize, dedupDetails));
            }

            return text.ToString();
        }

        public void WriteJson(Utf8JsonWriter w)
        {
            w.WriteStartObject();
            if (Image?.Snapshots is { Count: > 0 } snapshots)
            {
                w.WriteStartArray("snapshots");
                foreach (var s in snapshots)
                {
                    w.WriteStartObject();
                    w.WriteNumber("icount", s.InstructionCount ?? -1);
                    w.WriteNumber("vm-clock-nsec", (long)(s.VmClockNanoseconds % 1_000_000_000));
                    w.WriteString("name", s.Name);
                    w.WriteNumber("date-sec", s.DateSeconds);
                    w.WriteNumber("date-nsec", s.DateNanoseconds);
                    w.WriteNumber("vm-clock-sec", (long)(s.VmClockNanoseconds / 1_000_000_000));
                    w.WriteString("id", s.Id);
                    w.WriteNumber("vm-state-size", s.VmStateSize);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
            }

            if (Info?.BackingFormat is { } backingFormat && Info.BackingFileName is not null)
            {
                w.WriteString("backing-filename-format", backingFormat);
            }

            w.WriteNumber("virtual-size", VirtualSize);
            w.WriteString("filename", FileName);
            if (Info is { } info)
            {
                w.WriteNumber("cluster-size", info.ClusterSize);
            }

            w.WriteString("format", Format);
            w.WriteNumber("actual-size", ActualSize);
            if (Info is { } data)
            {
                WriteFormatSpecific(w, data);
                if (data.BackingFileName is { } backing)
                {
                    w.WriteString("full-backing-filename", FullBacking ?? backing);
                    w.WriteString("backing-filename", backing);
                }

                if (data.Encryption != EncryptionMethod.None)
                {
                    w.WriteBoolean("encrypted", true);
                }

                w.WriteBoolean("dirty-flag", data.Dirty);
                if (Image is { } image && image.GetExtension<DedupExtension>() is { State: not DedupIndexState.Absent })
                {
                    DedupInfo.WriteJson(w, image.GetDedupStatistics());
                }
            }

            if (Info is null)
            {
                w.WriteBoolean("dirty-flag", false); // qemu-img reports it for every format it reads
            }

            w.WriteEndObject();
        }

        private void WriteFormatSpecific(Utf8JsonWriter w, ImageInfo info)
        {
            w.WriteStartObject("format-specific");
            w.WriteString("type", "qcow2");
            w.WriteStartObject("data");
            w.WriteString("compat", info.Compat);
            w.WriteString("compression-type", CompressionName(info.CompressionType));
            if (info.Version >= 3)
            {
                w.WriteBoolean("lazy-refcounts", info.LazyRefcounts);
                if (Image?.Bitmaps is { Count: > 0 } bitmaps)
                {
                    w.WriteStartArray("bitmaps");
                    foreach (var bitmap in bitmaps)
                    {
                        w.WriteStartObject();
                        w.WriteStartArray("flags");
                        FlagNames(bitmap.Flags).ForEach(w.WriteStringValue);
                        w.WriteEndArray();
                        w.WriteString("name", bitmap.Name);
                        w.WriteNumber("granularity", bitmap.Granularity);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                }
            }

            w.WriteNumber("refcount-bits", info.RefcountBits);
            if (info.DataFile is { } dataFile)
            {
                w.WriteString("data-file", dataFile);
                w.WriteBoolean("data-file-raw", info.DataFileRaw);
            }

            if (info.Version >= 3)
            {
                w.WriteBoolean("corrupt", info.Corrupt);
                w.WriteBoolean("extended-l2", info.ExtendedL2);
            }

            if (info.UnknownCompatibleBits != 0)
            {
                w.WriteString("unknown-compatible-features", $"0x{info.UnknownCompatibleBits:x}");
            }

            if (info.UnknownAutoclearBits != 0)
            {
                w.WriteString("unknown-autoclear-features", $"0x{info.UnknownAutoclearBits:x}");
            }

            if (info.UnknownExtensions.Count > 0)
            {
                w.WriteStartArray("unknown-extensions");
                foreach (var extension in info.UnknownExtensions)
                {
                    w.WriteStartObject();
                    w.WriteString("magic", $"0x{extension.Type:x8}");
                    w.WriteNumber("length", extension.Data.Length);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
            }

            w.WriteEndObject();
            w.WriteEndObject();
        }
    }

    private static IEnumerable<string> UnknownFeatureNotes(ImageInfo info)
    {
        if (info.UnknownCompatibleBits != 0)
        {
            yield return $"unknown compatible features: 0x{info.UnknownCompatibleBits:x}";
        }

        if (info.UnknownAutoclearBits != 0)
        {
            var names = Enumerable.Range(0, 64).Where(b => (info.UnknownAutoclearBits & (1UL << b)) != 0)
                .Select(b => info.FeatureNames.FirstOrDefault(f => f.Kind == FeatureKind.Autoclear && f.Bit == b)?.Name is { } n ? $"{n} (bit {b})" : $"bit {b}");
            yield return $"unknown autoclear features: {string.Join(", ", names)}";
        }

        foreach (var extension in info.UnknownExtensions)
        {
            yield return $"unknown header extension: 0x{extension.Type:x8} ({extension.Data.Length} bytes)";
        }
    }

    internal static string CompressionName(CompressionType type) => type == CompressionType.Zstd ? "zstd" : "zlib";

    private static string Bool(bool value) => value ? "true" : "false";

    private static List<string> FlagNames(BitmapFlags flags)
    {
        var names = new List<string>();
        if ((flags & BitmapFlags.InUse) != 0)
        {
            names.Add("in-use");
        }

        if ((flags & BitmapFlags.Auto) != 0)
        {
            names.Add("auto");
        }

        return names;
    }
}

/// <summary>The --output option: human (default) or json.</summary>
internal static class OutputMode
{
    public static bool IsJson(string? value) => value switch
    {
        null or "human" => false,
        "json" => true,
        _ => throw new QemuArgumentError("--output must be used with human or json as argument."),
    };
}

/// <summary>qemu-img's snapshot list columns.</summary>
internal static class SnapshotTable
{
    public static string Header => Row("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");

    public static string Row(SnapshotTableEntry snapshot)
    {
        var date = DateTimeOffset.FromUnixTimeSeconds(snapshot.DateSeconds).ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
        var clockMs = snapshot.VmClockNanoseconds / 1_000_000;
        var clock = string.Create(CultureInfo.InvariantCulture, $"{clockMs / 3_600_000:00}:{clockMs / 60_000 % 60:00}:{clockMs / 1000 % 60:00}.{clockMs % 1000:000}");
        var icount = snapshot.InstructionCount is long count && count != -1 ? count.ToString(CultureInfo.InvariantCulture) : string.Empty;
        return Row(snapshot.Id, snapshot.Name, Sizes.Format(snapshot.VmStateSize), date, clock, icount);
    }

    private static string Row(string id, string tag, string size, string date, string clock, string icount) =>
        $"{id,-9} {tag,-17} {size,7}{date,20}{clock,13}{icount,11}";
}

/// <summary>How QEMU names a file given relative to another (block.c path_combine).</summary>
internal static class QemuPaths
{
    /// <summary>
    /// <paramref name="name"/> as QEMU resolves it against <paramref name="basePath"/>: an absolute
    /// name as it is, a relative one after the base's directory part as given (none: as it is). So
    /// "top.qcow2" with backing "base.qcow2" gives "base.qcow2", and "/d/top.qcow2" gives "/d/base.qcow2".
    /// </summary>
    public static string Combine(string basePath, string name)
    {
        if (name.StartsWith('/') || name.Contains("://", StringComparison.Ordinal))
        {
            return name;
        }

        var slash = basePath.LastIndexOf('/');
        return slash < 0 ? name : basePath[..(slash + 1)] + name;
    }
}
