using QcowDedup.Qcow2.Dedup.Format;
using QcowDedup.Qcow2.Dedup.Journal;
using QcowDedup.Qcow2.Dedup.Stores;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Dedup;

/// <content>Opening the index: a fresh one, or the stored incarnations, journal replay and the background filter load.</content>
internal sealed partial class DedupIndex
{
    /// <summary>
    /// Opens the index named by <paramref name="payload"/>, or starts a new one when the image is
    /// writable and either dedup was asked for or the stored index is stale.
    /// </summary>
    public static DedupIndex Open(IImageExtensionHost host, DedupOptions options, ReadOnlyMemory<byte>? payload, bool bitSet)
    {
        var index = new DedupIndex(host, options);
        DedupHeader? header = null;
        if (payload is { } stored)
        {
            if (!bitSet)
            {
                index.StaleReason = "the deduplication auto-clear bit was cleared by a program that does not maintain the index";
            }
            else
            {
                header = DedupHeader.TryDecode(stored.Span, host.ClusterSize, host.VirtualSize, out var problem);
                index.StaleReason = problem;
            }
        }

        if (header is not null)
        {
            try
            {
                index.Load(header);
                return index;
            }
            catch (InvalidDataException e)
            {
                // The areas it names overlap the image or each other: start over, touching none of them.
                index.ReleaseReservations();
                index = new DedupIndex(host, options) { StaleReason = e.Message };
            }
        }

        if (host.FormatVersion < 3)
        {
            // No auto-clear bits: another writer could never tell us it changed the image.
            if (payload is not null)
            {
                index.State = DedupIndexState.Stale;
                index.StaleReason ??= "a compat=0.10 (v2) image has no auto-clear bit to guard an index";
            }
            else if (host.IsWritable && options.Enable)
            {
                throw new NotSupportedException("Deduplication needs a compat=1.1 (v3) image: its index is guarded by an auto-clear feature bit, which v2 images do not have.");
            }

            return index;
        }

        if (payload is not null)
        {
            index.State = DedupIndexState.Stale;
            if (host.IsWritable)
            {
                // Another writer may have left COPIED flags behind on clusters it copied; repair before trusting anything.
                host.CheckAndRepair();
                index.CreateFresh();
            }
        }
        else if (host.IsWritable && options.Enable)
        {
            index.CreateFresh();
        }

        return index;
    }

    private void CreateFresh()
    {
        var maxOrder = DedupHeader.MaxOrderFor(_host.VirtualSize, _clusterSize);
        var order = _options.LogStoreOrder ?? DefaultOrder();
        if (order < 1 || order > maxOrder)
        {
            throw new ArgumentOutOfRangeException(nameof(DedupOptions.LogStoreOrder), order, $"The log store order must be between 1 and {maxOrder} for this disk (slots for at most twice its clusters).");
        }

        var maxIncarnations = _options.MaxIncarnations;
        var journalBlocks = DedupHeader.JournalBlocksFor(order);
        var journalClusters = ClustersFor((long)journalBlocks * IndexJournal.BlockSize);
        var listBytes = IncarnationList.SlotBytes(maxIncarnations);
        var listClusters = ClustersFor(listBytes);
        _header = new DedupHeader
        {
            InUse = true,
            Verify = _options.Verify,
            LogStoreOrder = order,
            HashStoreOrder = order,
            JournalBlocks = journalBlocks,
            JournalAreaA = AllocateReserved(journalClusters),
            JournalAreaB = AllocateReserved(journalClusters),
            JournalGeneration = RandomGeneration(),
            IncarnationListBytes = (int)(listClusters * _clusterSize),
            IncarnationListAreaA = AllocateReserved(listClusters),
            IncarnationListAreaB = AllocateReserved(listClusters),
            MaxIncarnations = maxIncarnations,
            MemoryBudget = _options.IndexMemoryBudget,
            MaxSharesPerCluster = _options.MaxSharesPerCluster,
        };
        _nextSequence = 1;
        _logStore = new LogStore(order, seed: (int)_header.JournalGeneration);
        _journal = new IndexJournal(_device, _header.CurrentJournalArea, journalBlocks, _header.JournalGeneration);
        _journal.Recycle(_header.JournalGeneration);
        _journal.Flush(); // erase block 0 now, so no earlier content at this place can ever replay
        _host.FlushFile();
        State = DedupIndexState.Active;
        ShareCap = ComputeShareCap();
        WriteHeader(inUse: true);
    }

    private void Load(DedupHeader header)
    {
        RecoveredFromCrash = header.InUse;
        _header = header.InUse && _host.IsWritable
            ? header with { Epoch = header.Epoch + 1, TrustedSinceEpoch = header.Epoch + 1 }
            : header;
        Reserve(header.JournalAreaA, ClustersFor((long)header.JournalBlocks * IndexJournal.BlockSize));
        Reserve(header.JournalAreaB, ClustersFor((long)header.JournalBlocks * IndexJournal.BlockSize));
        Reserve(header.IncarnationListAreaA, ClustersFor(header.IncarnationListBytes));
        Reserve(header.IncarnationListAreaB, ClustersFor(header.IncarnationListBytes));
        LoadIncarnations(header);
        ClustersWritten = header.ClustersWritten;
        ClustersDeduplicated = header.ClustersDeduplicated;
        _nextSequence = Math.Max(header.NextSequence, _hashStore.Live.Select(i => i.EndSequence).DefaultIfEmpty(1).Max());
        _logStore = new LogStore(header.LogStoreOrder, seed: (int)header.JournalGeneration);
        _journal = new IndexJournal(_device, header.CurrentJournalArea, header.JournalBlocks, header.JournalGeneration);
        Replay();
        State = DedupIndexState.Active;
        ShareCap = ComputeShareCap();
        if (_host.IsWritable)
        {
            if (RecoveredFromCrash)
            {
                _host.CheckAndRepair(); // COPIED flags and leaks a crash may have left behind
            }

            WriteHeader(inUse: true);
            _filterLoader = Task.Run(LoadFilters); // writes will look hashes up: load in the background, awaited at close
        }
    }

    private void LoadIncarnations(DedupHeader header)
    {
        if (header.IncarnationList == 0)
        {
            return;
        }

        var bytes = new byte[header.IncarnationListBytes];
        _device.Read(header.IncarnationList, bytes);
        var records = IncarnationList.TryDecode(bytes, _clusterSize, header.MaxIncarnations, header.LogStoreOrder);
        if (records is null)
        {
            return; // the list is damaged: older entries are lost, which only costs savings
        }

        foreach (var record in records.OrderByDescending(r => r.Generation))
        {
            Reserve(record.Offset, ClustersFor(record.Bytes));
            if (record.Live && record.Order == header.LogStoreOrder)
            {
                _hashStore.AddOldest(new Incarnation(record.Generation, record.Order, record.Offset, record.Entries, record.FirstSequence, record.EndSequence));
            }
            else
            {
                _hashStore.AddLimbo(record.Offset, record.Bytes);
            }
        }
    }

    /// <summary>Rebuilds the log store and the invalidations from the journal, then resumes appending after them.</summary>
    private void Replay()
    {
        foreach (var record in _journal.ReadAll())
        {
            if (record.Type == HashRecord && record.Payload.Length == IndexEntry.Size && IndexEntry.TryRead(record.Payload, out var entry))
            {
                _logStore.Insert(entry); // a table that overflows on replay just loses the entry
                _nextSequence = Math.Max(_nextSequence, entry.Sequence + 1);
            }
            else if (record.Type == FreeRecord && TryDecodeFree(record.Payload, out var host, out var sequence))
            {
                _freedAt[host] = Math.Max(_freedAt.GetValueOrDefault(host), sequence);
                _nextSequence = Math.Max(_nextSequence, sequence + 1);
            }
        }
    }

    private void LoadFilters()
    {
        foreach (var incarnation in _hashStore.Live.ToList())
        {
            incarnation.LoadFilter(_device);
        }
    }

    /// <summary>Waits until every filter is in memory (tests and statistics); a read-only image loads them now.</summary>
    public void WaitForFilters()
    {
        Task loader;
        lock (_filterLock)
        {
            loader = _filterLoader ??= Task.Run(LoadFilters);
        }

        loader.Wait();
    }

    /// <summary>Lets the background loader finish before the image closes its file under it.</summary>
    private void AwaitFilterLoader()
    {
        try
        {
            _filterLoader?.Wait();
        }
        catch (AggregateException)
        {
            // A filter that could not be read only costs savings; the close goes on.
        }
    }
}
