namespace QcowDedup.Qcow2.Check;

/// <summary>Counters and messages collected while checking.</summary>
internal sealed class CheckReport
{
    public int CheckErrors { get; set; }

    public int Corruptions { get; set; }

    public int Leaks { get; set; }

    public int CorruptionsFixed { get; set; }

    public int LeaksFixed { get; set; }

    public long Allocated { get; set; }

    public long Fragmented { get; set; }

    public long Compressed { get; set; }

    public List<string> Messages { get; } = [];

    public List<DataLoss> Losses { get; } = [];

    /// <summary>Why the check stopped early (qemu-img's "Check failed: …"), or null.</summary>
    public string? Failure { get; set; }

    public void Error(string message)
    {
        Corruptions++;
        Messages.Add(message);
    }

    public void CheckError(string message)
    {
        CheckErrors++;
        Messages.Add(message);
    }

    public void Note(string message) => Messages.Add(message);

    /// <summary>Stops the check the way QEMU's check returns -EIO: what was counted stays, no summary follows.</summary>
    public CheckAbortedException Abort(string? message = null, string reason = CheckAbortedException.InputOutputError)
    {
        if (message is not null)
        {
            Messages.Add(message);
        }

        Failure = reason;
        return new CheckAbortedException(reason);
    }

    public (int CheckErrors, int Corruptions, int Leaks, int CorruptionsFixed, int LeaksFixed) Counters
    {
        get => (CheckErrors, Corruptions, Leaks, CorruptionsFixed, LeaksFixed);
        set => (CheckErrors, Corruptions, Leaks, CorruptionsFixed, LeaksFixed) = value;
    }
}

/// <summary>Unwinds a check that cannot go on; the report keeps what was found until then.</summary>
internal sealed class CheckAbortedException(string reason) : Exception(reason)
{
    /// <summary>strerror(EIO), the reason QEMU gives for nearly every aborted check.</summary>
    public const string InputOutputError = "Input/output error";
}
