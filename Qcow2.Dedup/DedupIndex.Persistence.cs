using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Dedup.Journal;
using QcowDedup.Qcow2.Dedup.Stores;

namespace QcowDedup.Qcow2.Dedup;

internal sealed partial class DedupIndex
{
    /// <summary>A packed journal may fill at most this share of its area; beyond it the log store freezes instead.</summary>
    private const double PackLimit = 0.75;

    /// <summary>
    /// Completed journal blocks held in memory before the image is flushed to write them (256 KiB):
    /// one flush per about 3,900 indexed clusters instead of one per block.
    /// </summary>
    private const int MaxPendingBlocks = 64;

    /// <summary>
    /// Appends a record. Journal blocks reach the disk only after the image's data and metadata
    /// are made durable, so a durable entry never names clusters that are not.
    /// </summary>
    private void Append(byte type, ReadOnlySpan<byte> payload)
    {
        if (_journal.IsFull)
        {
            PackOrFreeze();
        }

        if (_journal.Append(type, payload) < 0)
        {
            PackOrFreeze();
            _journal.Append(type, payload);
        }

        if (_journal.PendingBlocks >= MaxPendingBlocks)
        {
            _host.FlushImage();
            _journal.Flush();
        }
    }

    /// <summary>
    /// The journal is full: rewrite the live entries into the spare area when they take little
    /// room (pack), otherwise turn the log store into an incarnation (freeze).
    /// </summary>
    private void PackOrFreeze()
    {
        PruneInvalidations(Math.Min(_hashStore.MinimumSequence, MinimumLogStoreSequence()));
        var records = (long)_logStore.Count + _freedAt.Count;
        var packedBlocks = IndexJournal.BlocksFor(records, IndexEntry.Size + 2);
        if (packedBlocks <= _journal.Blocks * PackLimit)
        {
            Pack();
        }
        else
        {
            Freeze();
        }
    }

    /// <summary>Writes the invalidations and log store entries into the spare journal area and switches to it.</summary>
    private void Pack()
    {
        _host.FlushImage();
        var generation = _journal.Generation + 1;
        var packed = new IndexJournal(_device, _header.SpareJournalArea, _header.JournalBlocks, generation);
        packed.Recycle(generation);
        foreach (var (host, sequence) in _freedAt)
        {
            AppendOrThrow(packed, FreeRecord, EncodeFree(host, sequence));
        }

        var record = new byte[IndexEntry.Size];
        foreach (var entry in _logStore.Entries())
        {
            entry.Write(record);
            AppendOrThrow(packed, HashRecord, record);
        }

        packed.Flush();
        _host.FlushFile();
        _header = _header with { ActiveJournal = 1 - _header.ActiveJournal, JournalGeneration = generation };
        _journal = packed;
        Packs++;
        WriteHeader(inUse: true);
    }

    /// <summary>
    /// Turns the log store into the youngest incarnation (reusing a limbo area when one fits),
    /// drops the oldest incarnations beyond the configured count or memory budget, and restarts
    /// the journal with only the invalidations that still matter.
    /// </summary>
    public void Freeze()
    {
        _host.FlushImage();
        var order = _logStore.Order;
        var bytes = Incarnation.AreaBytes(order);
        var offset = _hashStore.TakeLimbo(bytes) ?? AllocateReserved(ClustersFor(bytes));
        var incarnation = Incarnation.Freeze(_logStore, (uint)_header.NextGeneration, offset, _device);
        _hashStore.AddYoungest(incarnation);
        _logStore.Clear();
        DropBeyondLimits();
        PruneInvalidations(_hashStore.MinimumSequence);

        // Keep the invalidations within half the journal: if they would not fit, older incarnations must go.
        var generation = _journal.Generation + 1;
        while (IndexJournal.BlocksFor(_freedAt.Count, FreePayloadSize + 2) > _journal.Blocks / 2 && _hashStore.Live.Count > 0)
        {
            _hashStore.DropOldest();
            PruneInvalidations(_hashStore.MinimumSequence);
        }

        var listOffset = _header.IncarnationList == _header.IncarnationListAreaA ? _header.IncarnationListAreaB : _header.IncarnationListAreaA;
        _device.Write(listOffset, IncarnationList.Encode(_hashStore.Records(), _header.IncarnationListBytes));
        _journal.Recycle(generation);
        foreach (var (host, sequence) in _freedAt)
        {
            AppendOrThrow(_journal, FreeRecord, EncodeFree(host, sequence));
        }

        _journal.Flush();
        _host.FlushFile();
        _header = _header with
        {
            IncarnationList = listOffset,
            LiveIncarnations = _hashStore.Live.Count,
            LimboIncarnations = _hashStore.Limbo.Count,
            JournalGeneration = generation,
            NextGeneration = _header.NextGeneration + 1,
        };
        Freezes++;
        WriteHeader(inUse: true);
    }

    /// <summary>Makes the journal durable (the image has just flushed its own data and metadata).</summary>
    public void Flush()
    {
        if (State == DedupIndexState.Active && _host.IsWritable && _journal.IsDirty)
        {
            _journal.Flush();
            _host.FlushFile();
        }
    }

    /// <summary>Final flush and a header marked not in use: the next open knows this session ended cleanly.</summary>
    public void Close()
    {
        AwaitFilterLoader();
        if (State != DedupIndexState.Active || !_host.IsWritable)
        {
            return;
        }

        _host.FlushImage();
        _journal.Flush();
        _host.FlushFile();
        WriteHeader(inUse: false);
    }

    private void DropBeyondLimits()
    {
        while (_hashStore.Live.Count > _header.MaxIncarnations
            || (_header.MemoryBudget > 0 && MemoryBytes > _header.MemoryBudget && _hashStore.Live.Count > 0))
        {
            _hashStore.DropOldest();
        }
    }

    /// <summary>Invalidations older than every live entry can no longer kill anything.</summary>
    private void PruneInvalidations(long minimumLiveSequence)
    {
        foreach (var host in _freedAt.Where(f => f.Value < minimumLiveSequence).Select(f => f.Key).ToList())
        {
            _freedAt.Remove(host);
        }
    }

    private long MinimumLogStoreSequence() =>
        _logStore.Count == 0 ? long.MaxValue : _logStore.Entries().Min(e => e.Sequence);

    private void WriteHeader(bool inUse)
    {
        _header = _header with
        {
            InUse = inUse,
            NextSequence = _nextSequence,
            ClustersWritten = ClustersWritten,
            ClustersDeduplicated = ClustersDeduplicated,
            LiveIncarnations = _hashStore.Live.Count,
            LimboIncarnations = _hashStore.Limbo.Count,
        };
        _host.SetHeaderExtension(_header.Encode(), autoclearBitSet: true);
    }

    /// <summary>Appends while packing or freezing: the image was just flushed, so blocks may be written as they fill.</summary>
    private static void AppendOrThrow(IndexJournal journal, byte type, byte[] payload)
    {
        if (journal.Append(type, payload) < 0)
        {
            throw new InvalidOperationException("The dedup journal is too small for the entries it must hold.");
        }

        if (journal.PendingBlocks >= MaxPendingBlocks)
        {
            journal.Flush();
        }
    }
}
