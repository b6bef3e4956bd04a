namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// Serializes guest requests that touch the same clusters: readers share a range, a writer holds
/// it alone. This keeps a host cluster from being freed and reused while a read of it is in
/// flight, and makes read-modify-write of a cluster atomic with respect to other writers.
/// Requests on different clusters never wait for each other.
/// </summary>
internal sealed class RangeLock
{
    private readonly Lock _sync = new();
    private readonly List<Holder> _holders = [];

    public async ValueTask<Releaser> AcquireAsync(long start, long end, bool exclusive, bool async, CancellationToken cancellationToken)
    {
        var holder = new Holder(start, end, exclusive);
        while (true)
        {
            Task? wait = null;
            lock (_sync)
            {
                foreach (var other in _holders)
                {
                    if (other.Start < end && start < other.End && (exclusive || other.Exclusive))
                    {
                        wait = other.Released.Task;
                        break;
                    }
                }

                if (wait is null)
                {
                    _holders.Add(holder);
                    return new Releaser(this, holder);
                }
            }

            if (async)
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            else
            {
                wait.Wait(cancellationToken);
            }
        }
    }

    private void Release(Holder holder)
    {
        lock (_sync)
        {
            _holders.Remove(holder);
        }

        holder.Released.TrySetResult();
    }

    internal sealed class Holder(long start, long end, bool exclusive)
    {
        public long Start { get; } = start;

        public long End { get; } = end;

        public bool Exclusive { get; } = exclusive;

        public TaskCompletionSource Released { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public readonly struct Releaser : IDisposable
    {
        private readonly RangeLock? _owner;
        private readonly Holder? _holder;

        internal Releaser(RangeLock owner, Holder holder)
        {
            _owner = owner;
            _holder = holder;
        }

        public void Dispose()
        {
            if (_owner is not null && _holder is not null)
            {
                _owner.Release(_holder);
            }
        }
    }
}
