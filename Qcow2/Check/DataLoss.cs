namespace QcowDedup.Qcow2.Check;

/// <summary>
/// Guest data a repair could not keep (check -r all past the point where qemu-img stops, issue 9):
/// the range reads as zeros afterwards (or, in a v2 image with a backing file, from the backing
/// file), where before the repair it could not be read as the guest wrote it.
/// </summary>
/// <param name="SnapshotId">The snapshot whose disk lost the range, or null for the active disk.</param>
/// <param name="GuestOffset">First guest byte of the range.</param>
/// <param name="Length">Bytes in the range.</param>
/// <param name="Reason">Why it was dropped, naming the structure and its offset.</param>
public sealed record DataLoss(string? SnapshotId, long GuestOffset, long Length, string Reason);
