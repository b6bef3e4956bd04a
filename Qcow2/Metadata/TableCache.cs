using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Metadata;

/// <summary>
/// A write-back LRU cache of cluster-sized metadata tables (L2 tables or refcount blocks), after
/// QEMU's qcow2-cache.c. Callers hold the metadata lock. Ordering between caches follows QEMU's
/// dependency rule: before this cache writes any table, the cache it depends on is written and
/// the file flushed; <see cref="FlushStorageBeforeWrite"/> additionally orders guest data (copied
/// clusters) before the tables that point at it.
/// </summary>
internal sealed class TableCache
{
    private readonly HashSet<long> _writeFirst = [];
    private readonly IStorage _storage;
    private readonly Dictionary<long, CachedTable> _tables;
    private readonly string _structure;
    private long _clock;

    public TableCache(IStorage storage, int tableSize, int capacity, string structure)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 2);
        _storage = storage;
        TableSize = tableSize;
        Capacity = capacity;
        _structure = structure;
        _tables = new Dictionary<long, CachedTable>(Math.Min(capacity, 4096));
    }

    public int TableSize { get; }

    public int Capacity { get; }

    /// <summary>Number of tables currently held.</summary>
    public int Count => _tables.Count;

    /// <summary>The cache that must reach the disk before any table of this one does.</summary>
    public TableCache? Dependency { get; private set; }

    /// <summary>When set, the file is flushed (guest data made durable) before this cache writes a table.</summary>
    public bool FlushStorageBeforeWrite { get; set; }

    /// <summary>Called before a table is written, with its offset; may throw to refuse the write.</summary>
    public Action<long>? BeforeWrite { get; set; }

    /// <summary>Whether any table awaits writing.</summary>
    public bool HasDirtyTables => _tables.Values.Any(t => t.Dirty);

    /// <summary>Returns the table at <paramref name="offset"/>, reading it on a miss. The handle pins it.</summary>
    public async ValueTask<TableHandle> GetAsync(long offset, bool async, CancellationToken cancellationToken)
    {
        if (_tables.TryGetValue(offset, out var table))
        {
            table.LastUse = ++_clock;
            return new TableHandle(table);
        }

        table = await TakeSlotAsync(offset, async, cancellationToken).ConfigureAwait(false);
        try
        {
            var read = await _storage.ReadAsync(offset, table.Data, async, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                throw Qcow2Corruption.Create(_structure, "lies past the end of the image file", offset);
            }

            table.Data.AsSpan(read).Clear();
        }
        catch
        {
            _tables.Remove(offset);
            throw;
        }

        return new TableHandle(table);
    }

    /// <summary>Returns a zero-filled table for a newly allocated cluster, marked dirty.</summary>
    public async ValueTask<TableHandle> CreateAsync(long offset, bool async, CancellationToken cancellationToken)
    {
        if (!_tables.TryGetValue(offset, out var table))
        {
            table = await TakeSlotAsync(offset, async, cancellationToken).ConfigureAwait(false);
        }

        Array.Clear(table.Data);
        table.Dirty = true;
        table.LastUse = ++_clock;
        return new TableHandle(table);
    }

    /// <summary>Whether the table is cached (without touching its LRU position).</summary>
    public bool Contains(long offset) => _tables.ContainsKey(offset);

    /// <summary>
    /// Makes this cache depend on <paramref name="dependency"/> (QEMU's qcow2_cache_set_dependency):
    /// an existing opposite or different dependency is resolved by flushing first.
    /// </summary>
    public async ValueTask SetDependencyAsync(TableCache dependency, bool async, CancellationToken cancellationToken)
    {
        if (dependency.Dependency is not null)
        {
            await dependency.FlushDependencyAsync(async, cancellationToken).ConfigureAwait(false);
        }

        if (Dependency is not null && Dependency != dependency)
        {
            await FlushDependencyAsync(async, cancellationToken).ConfigureAwait(false);
        }

        Dependency = dependency;
    }

    /// <summary>Writes every dirty table (after its dependencies), without a final file flush.</summary>
    public async ValueTask WriteDirtyAsync(bool async, CancellationToken cancellationToken)
    {
        var dirty = _tables.Values.Where(t => t.Dirty).OrderBy(t => t.Offset).ToList();
        if (dirty.Count == 0)
        {
            return;
        }

        await PrepareWriteAsync(async, cancellationToken).ConfigureAwait(false);
        foreach (var table in dirty)
        {
            await WriteTableAsync(table, async, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Writes every dirty table and flushes the file.</summary>
    public async ValueTask FlushAsync(bool async, CancellationToken cancellationToken)
    {
        await WriteDirtyAsync(async, cancellationToken).ConfigureAwait(false);
        await _storage.FlushAsync(async, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Marks a table modified and orders it before every other table of this cache: the next time
    /// any table is written, the marked ones are written and the file flushed first.
    /// </summary>
    public void MarkDirtyWriteFirst(TableHandle handle)
    {
        handle.Table.Dirty = true;
        _writeFirst.Add(handle.Offset);
    }

    /// <summary>Drops a table whose cluster was freed, discarding unwritten changes.</summary>
    public void Forget(long offset)
    {
        _tables.Remove(offset);
        _writeFirst.Remove(offset);
    }

    /// <summary>Drops every clean table (used after the file changed underneath, e.g. a repair).</summary>
    public void Clear()
    {
        if (HasDirtyTables)
        {
            throw new InvalidOperationException($"Cannot clear the {_structure} cache while tables are unwritten.");
        }

        _tables.Clear();
        Dependency = null;
    }

    /// <summary>Marks a table modified.</summary>
    public static void MarkDirty(TableHandle handle) => handle.Table.Dirty = true;

    private async ValueTask FlushDependencyAsync(bool async, CancellationToken cancellationToken)
    {
        if (Dependency is { } dependency)
        {
            await dependency.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            Dependency = null;
        }
    }

    private async ValueTask PrepareWriteAsync(bool async, CancellationToken cancellationToken)
    {
        await FlushDependencyAsync(async, cancellationToken).ConfigureAwait(false);
        if (_writeFirst.Count > 0)
        {
            // Forgotten only once written and flushed: after an I/O error the order still holds on retry.
            var first = _writeFirst.Select(o => _tables.GetValueOrDefault(o)).Where(t => t is { Dirty: true }).ToList();
            foreach (var table in first)
            {
                await WriteTableAsync(table!, async, cancellationToken).ConfigureAwait(false);
            }

            await _storage.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            _writeFirst.Clear();
        }

        if (FlushStorageBeforeWrite)
        {
            await _storage.FlushAsync(async, cancellationToken).ConfigureAwait(false);
            FlushStorageBeforeWrite = false;
        }
    }

    private async ValueTask WriteTableAsync(CachedTable table, bool async, CancellationToken cancellationToken)
    {
        BeforeWrite?.Invoke(table.Offset);
        await _storage.WriteAsync(table.Offset, table.Data, async, cancellationToken).ConfigureAwait(false);
        table.Dirty = false;
    }

    private async ValueTask<CachedTable> TakeSlotAsync(long offset, bool async, CancellationToken cancellationToken)
    {
        byte[] buffer;
        if (_tables.Count < Capacity)
        {
            buffer = new byte[TableSize];
        }
        else
        {
            CachedTable? victim = null;
            foreach (var candidate in _tables.Values)
            {
                if (candidate.Pins == 0 && (victim is null || candidate.LastUse < victim.LastUse))
                {
                    victim = candidate;
                }
            }

            if (victim is null)
            {
                throw new InvalidOperationException($"Every {_structure} in the cache is in use; the cache is too small.");
            }

            if (victim.Dirty)
            {
                await PrepareWriteAsync(async, cancellationToken).ConfigureAwait(false);
                await WriteTableAsync(victim, async, cancellationToken).ConfigureAwait(false);
            }

            _tables.Remove(victim.Offset);
            buffer = victim.Data;
        }

        var table = new CachedTable(offset, buffer) { LastUse = ++_clock };
        _tables.Add(offset, table);
        return table;
    }
}

/// <summary>One cached table.</summary>
internal sealed class CachedTable(long offset, byte[] data)
{
    public long Offset { get; } = offset;

    public byte[] Data { get; } = data;

    public bool Dirty { get; set; }

    public long LastUse { get; set; }

    public int Pins { get; set; }
}

/// <summary>A pinned cached table; disposing unpins it so it may be evicted again.</summary>
internal readonly struct TableHandle : IDisposable
{
    public TableHandle(CachedTable table)
    {
        Table = table;
        table.Pins++;
    }

    public CachedTable Table { get; }

    public long Offset => Table.Offset;

    public Span<byte> Span => Table.Data;

    public void Dispose() => Table.Pins--;
}
