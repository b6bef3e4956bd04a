namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// Runs a core routine that was called with <c>async: false</c>. Such a task has normally
/// completed already; the fallback only matters if a caller-supplied storage is async-only.
/// </summary>
internal static class SyncOver
{
    public static void Run(ValueTask task)
    {
        if (task.IsCompletedSuccessfully)
        {
            return;
        }

        task.AsTask().GetAwaiter().GetResult();
    }

    public static T Run<T>(ValueTask<T> task) =>
        task.IsCompletedSuccessfully ? task.Result : task.AsTask().GetAwaiter().GetResult();
}
