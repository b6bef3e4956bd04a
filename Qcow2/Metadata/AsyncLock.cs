namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// The image's metadata lock: one holder at a time, taken either synchronously or asynchronously
/// by the same core routine (the <c>async</c> flag pattern). Not re-entrant: routines named
/// "…Locked" expect the caller to hold it.
/// </summary>
internal sealed class AsyncLock : IDisposable
{
    private readonly SemaphoreSlim _semaphore = new(1, 1);

    /// <summary>
    /// Runs by the holder just before every release, while it still holds the lock: publishes
    /// what lock-free readers see of the state the holder changed (the metadata overlap index).
    /// Must not throw.
    /// </summary>
    public Action? BeforeRelease { get; set; }

    public async ValueTask<Releaser> AcquireAsync(bool async, CancellationToken cancellationToken)
    {
        if (async)
        {
            await _semaphore.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            _semaphore.Wait(cancellationToken);
        }

        return new Releaser(this);
    }

    public void Dispose() => _semaphore.Dispose();

    public readonly struct Releaser(AsyncLock owner) : IDisposable
    {
        public void Dispose()
        {
            try
            {
                owner.BeforeRelease?.Invoke();
            }
            finally
            {
                owner._semaphore.Release();
            }
        }
    }
}
