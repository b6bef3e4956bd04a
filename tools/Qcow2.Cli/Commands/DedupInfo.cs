using System.Globalization;
using System.Text;
using System.Text.Json;
using QcowDedup.Qcow2.Dedup;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// The deduplication part of qcow2 info: in user terms (what is stored once, what it saves, what
/// the index costs and that losing it loses no data), and with --dedup-details the index's
/// internals (log store, frozen incarnations, limbo) as well; JSON carries everything.
/// </summary>
internal static class DedupInfo
{
    public static string Human(DedupStatistics s, int clusterSize, bool details)
    {
        var text = new StringBuilder();
        void Line(string name, object value) => text.Append(CultureInfo.InvariantCulture, $"    {name}: {value}\n");
        string Bytes(long clusters) => Sizes.Format(clusters * clusterSize);
        if (s.State == DedupIndexState.Active)
        {
            text.Append("Deduplication: on\n");
            Line("stored once", $"{s.References} guest clusters of data ({Bytes(s.References)}) are kept in {s.UniqueClusters} clusters of the file ({Bytes(s.UniqueClusters)})");
            Line("space saved", $"{Sizes.Format(s.BytesSaved)}: without deduplication the file would hold {Sizes.Format(s.BytesSaved)} more data ({s.DedupRatio.ToString("0.00", CultureInfo.InvariantCulture)}x less)");
            Line("index", $"hashes of written clusters, kept in the image; {Sizes.Format(s.IndexMemoryBytes)} of memory while open. Losing it loses future savings, never data");
        }
        else
        {
            text.Append("Deduplication: paused\n");
            Line("why", $"{s.StaleReason ?? "the index is out of date"}; the data is unaffected, and the next read-write open with deduplication starts a new index");
        }

        if (!details)
        {
            return text.ToString();
        }

        text.Append("Deduplication details:\n");
        Line("state", Name(s.State));
        if (s.StaleReason is { } reason)
        {
            Line("stale because", reason);
        }

        Line("hash", s.HashAlgorithm);
        Line("clusters written", s.ClustersWritten);
        Line("clusters deduplicated", s.ClustersDeduplicated);
        Line("data clusters referenced", s.References);
        Line("unique clusters", s.UniqueClusters);
        Line("shared references", s.SharedReferences);
        Line("bytes saved", $"{Sizes.Format(s.BytesSaved)} ({s.BytesSaved} bytes)");
        Line("dedup ratio", s.DedupRatio.ToString("0.00", CultureInfo.InvariantCulture));
        Line("log store", $"{s.LogStoreEntries}/{s.LogStoreCapacity} entries");
        Line("incarnations", s.IncarnationEntries.Count == 0
            ? "none"
            : $"{s.IncarnationEntries.Count} ({string.Join(", ", s.IncarnationEntries)} entries; {s.IncarnationFillRate.ToString("0.0%", CultureInfo.InvariantCulture)} of slots filled at freeze)");
        Line("limbo incarnations", s.LimboIncarnations);
        Line("index memory", $"{Sizes.Format(s.IndexMemoryBytes)} ({s.IndexBytesPerIndexedCluster.ToString("0.0", CultureInfo.InvariantCulture)} bytes per indexed cluster)");
        return text.ToString();
    }

    public static void WriteJson(Utf8JsonWriter w, DedupStatistics s)
    {
        w.WriteStartObject("dedup");
        w.WriteString("state", Name(s.State));
        if (s.StaleReason is { } reason)
        {
            w.WriteString("stale-reason", reason);
        }

        w.WriteString("hash", s.HashAlgorithm);
        w.WriteNumber("clusters-written", s.ClustersWritten);
        w.WriteNumber("clusters-deduplicated", s.ClustersDeduplicated);
        w.WriteNumber("references", s.References);
        w.WriteNumber("unique-clusters", s.UniqueClusters);
        w.WriteNumber("shared-references", s.SharedReferences);
        w.WriteNumber("bytes-saved", s.BytesSaved);
        w.WriteNumber("dedup-ratio", Math.Round(s.DedupRatio, 4));
        w.WriteNumber("log-store-entries", s.LogStoreEntries);
        w.WriteNumber("log-store-capacity", s.LogStoreCapacity);
        w.WriteStartArray("incarnation-entries");
        foreach (var entries in s.IncarnationEntries)
        {
            w.WriteNumberValue(entries);
        }

        w.WriteEndArray();
        w.WriteNumber("incarnation-fill-rate", Math.Round(s.IncarnationFillRate, 4));
        w.WriteNumber("limbo-incarnations", s.LimboIncarnations);
        w.WriteNumber("index-memory", s.IndexMemoryBytes);
        w.WriteNumber("index-bytes-per-cluster", Math.Round(s.IndexBytesPerIndexedCluster, 2));
        w.WriteEndObject();
    }

    private static string Name(DedupIndexState state) => state.ToString().ToLowerInvariant();
}
