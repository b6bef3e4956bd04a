namespace QcowDedup.Qcow2.Check;

/// <summary>What a check may repair (qemu-img check -r).</summary>
[Flags]
public enum CheckRepair
{
    /// <summary>Only report.</summary>
    None = 0,

    /// <summary>-r leaks: free clusters whose refcount is higher than their references.</summary>
    Leaks = 1,

    /// <summary>Fix corruptions (refcounts too low, COPIED flags, broken refcount structure).</summary>
    Errors = 2,

    /// <summary>-r all.</summary>
    All = Leaks | Errors,
}

/// <summary>The counters of qemu-img check (QAPI ImageCheck), with the same meaning.</summary>
public sealed record CheckResult
{
    /// <summary>Internal errors that stopped parts of the check (qemu-img exit code 1).</summary>
    public int CheckErrors { get; init; }

    /// <summary>Inconsistencies that could damage data (exit code 2).</summary>
    public int Corruptions { get; init; }

    /// <summary>Clusters with a refcount higher than their references (exit code 3).</summary>
    public int Leaks { get; init; }

    /// <summary>Corruptions repaired.</summary>
    public int CorruptionsFixed { get; init; }

    /// <summary>Leaks repaired.</summary>
    public int LeaksFixed { get; init; }

    /// <summary>End of the highest cluster in use.</summary>
    public long ImageEndOffset { get; init; }

    /// <summary>Guest clusters of the virtual disk.</summary>
    public long TotalClusters { get; init; }

    /// <summary>Guest clusters with a host cluster (active L1 only).</summary>
    public long AllocatedClusters { get; init; }

    /// <summary>Allocated guest clusters not contiguous with the previous one.</summary>
    public long FragmentedClusters { get; init; }

    /// <summary>Compressed guest clusters.</summary>
    public long CompressedClusters { get; init; }

    /// <summary>Diagnostics in QEMU's wording ("Leaked cluster 5 refcount=1 reference=0", …).</summary>
    public IReadOnlyList<string> Messages { get; init; } = [];

    /// <summary>
    /// Guest ranges whose data a repair dropped because it could not be read (an L2 entry past the
    /// end of the file, an L2 table that cannot be located, a snapshot whose L1 table cannot be);
    /// empty unless <see cref="CheckRepair.All"/> went past what qemu-img check -r all repairs.
    /// </summary>
    public IReadOnlyList<DataLoss> Losses { get; init; } = [];

    /// <summary>
    /// Why the check stopped before its end, in QEMU's words (qemu-img prints "Check failed:" and
    /// this, and no summary), e.g. "Input/output error" when the refcount structure must be
    /// rebuilt but only leaks may be repaired; null when it ran to the end.
    /// </summary>
    public string? Failure { get; init; }

    /// <summary>Whether nothing is wrong (after repairs).</summary>
    public bool IsClean => Failure is null && CheckErrors == 0 && Corruptions == 0 && Leaks == 0;

    /// <summary>qemu-img check's exit code: 0 clean, 1 check errors or failed check, 2 corruptions, 3 leaks only.</summary>
    public int ExitCode => Failure is not null || CheckErrors > 0 ? 1 : Corruptions > 0 ? 2 : Leaks > 0 ? 3 : 0;
}
