namespace QcowDedup.Qcow2.Dedup;

/// <summary>How deduplication behaves. The defaults suit almost everyone.</summary>
public sealed record DedupOptions
{
    /// <summary>Start an index on an image that has none (create -o dedup=on). Images with an index always use it.</summary>
    public bool Enable { get; init; } = true;

    /// <summary>
    /// log2 of the log store's bucket count (4 entries per bucket). Null sizes it from the disk:
    /// slots for half the disk's clusters, between 2^6 and 2^15 buckets (8 MiB).
    /// </summary>
    public int? LogStoreOrder { get; init; }

    /// <summary>Frozen log stores kept; the oldest beyond this are dropped (their space is reused).</summary>
    public int MaxIncarnations { get; init; } = 8;

    /// <summary>RAM the index may use, in bytes; 0 for no limit. Oldest incarnations are dropped to stay below it.</summary>
    public long IndexMemoryBudget { get; init; }

    /// <summary>Compare the bytes of a cluster before sharing it (dedup_verify=on), beyond trusting SHA-256.</summary>
    public bool Verify { get; init; }

    /// <summary>References one host cluster may get through sharing; 0 means half the refcount maximum.</summary>
    public int MaxSharesPerCluster { get; init; }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> for values no image could use.</summary>
    public void Validate()
    {
        if (LogStoreOrder is < 1 or > Format.DedupHeader.MaxOrder)
        {
            throw new ArgumentOutOfRangeException(nameof(LogStoreOrder), LogStoreOrder, $"The log store order must be between 1 and {Format.DedupHeader.MaxOrder}.");
        }

        if (MaxIncarnations is < 1 or > Format.DedupHeader.MaxIncarnationsLimit)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxIncarnations), MaxIncarnations, $"Between 1 and {Format.DedupHeader.MaxIncarnationsLimit} incarnations may be kept.");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(IndexMemoryBudget);
        ArgumentOutOfRangeException.ThrowIfNegative(MaxSharesPerCluster);
    }
}
