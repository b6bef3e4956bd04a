namespace QcowDedup.Qcow2.Dedup;

/// <summary>What deduplication achieved and what its index costs.</summary>
public sealed record DedupStatistics
{
    /// <summary>Whether the index is active, stale or absent.</summary>
    public required DedupIndexState State { get; init; }

    /// <summary>Why a stored index was not used.</summary>
    public string? StaleReason { get; init; }

    /// <summary>Hash algorithm ("sha256").</summary>
    public string HashAlgorithm { get; init; } = "sha256";

    /// <summary>Full data clusters written through the index (cumulative, saved at close).</summary>
    public long ClustersWritten { get; init; }

    /// <summary>Of those, the ones stored by sharing an existing cluster.</summary>
    public long ClustersDeduplicated { get; init; }

    /// <summary>Guest clusters of the active disk mapped to data clusters.</summary>
    public long References { get; init; }

    /// <summary>Distinct host clusters holding that data.</summary>
    public long UniqueClusters { get; init; }

    /// <summary>References beyond the first to a host cluster.</summary>
    public long SharedReferences => References - UniqueClusters;

    /// <summary>Bytes not stored thanks to sharing.</summary>
    public long BytesSaved { get; init; }

    /// <summary>References per unique cluster (1.0 without sharing).</summary>
    public double DedupRatio => UniqueClusters == 0 ? 1.0 : (double)References / UniqueClusters;

    /// <summary>Entries in the log store.</summary>
    public int LogStoreEntries { get; init; }

    /// <summary>Slots in the log store.</summary>
    public int LogStoreCapacity { get; init; }

    /// <summary>Entries in each live incarnation, youngest first.</summary>
    public IReadOnlyList<long> IncarnationEntries { get; init; } = [];

    /// <summary>
    /// Share of the table's slots the live incarnations held when they froze (the cuckoo fill rate
    /// reached before a freeze; lower when a freeze came from a journal full of invalidations).
    /// </summary>
    public double IncarnationFillRate => IncarnationEntries.Count == 0 || LogStoreCapacity == 0 ? 0 : IncarnationEntries.Average() / LogStoreCapacity;

    /// <summary>Dropped incarnations whose space awaits reuse.</summary>
    public int LimboIncarnations { get; init; }

    /// <summary>Entries the index holds.</summary>
    public long IndexedClusters => LogStoreEntries + IncarnationEntries.Sum();

    /// <summary>RAM the index uses.</summary>
    public long IndexMemoryBytes { get; init; }

    /// <summary>RAM of the log store's table (its budget: fixed by the log store's size, however full).</summary>
    public long LogStoreMemoryBytes { get; init; }

    /// <summary>RAM of the frozen incarnations (their in-memory filters; the entries stay on disk).</summary>
    public long IncarnationMemoryBytes { get; init; }

    /// <summary>RAM per entry of the frozen incarnations.</summary>
    public double IncarnationBytesPerEntry => IncarnationEntries.Sum() is var entries and > 0 ? (double)IncarnationMemoryBytes / entries : 0;

    /// <summary>RAM per indexed cluster.</summary>
    public double IndexBytesPerIndexedCluster => IndexedClusters == 0 ? 0 : (double)IndexMemoryBytes / IndexedClusters;

    /// <summary>Host clusters changed since the oldest live entry, held to reject dead entries.</summary>
    public int Invalidations { get; init; }

    /// <summary>References a cluster may get through sharing.</summary>
    public int MaxSharesPerCluster { get; init; }

    /// <summary>Log stores frozen into incarnations in this session.</summary>
    public int Freezes { get; init; }

    /// <summary>Journal packs in this session.</summary>
    public int Packs { get; init; }
}
