namespace QcowDedup.Qcow2.Storage;

/// <summary>Publishes an opener's permissions on whatever file an <see cref="IStorage"/> stands for.</summary>
internal static class StorageLocks
{
    /// <summary>
    /// Holds <paramref name="request"/> on the storage's file (for a <see cref="FileStorage"/> or a
    /// <see cref="FileStream"/>); other storages are not shared files and are left alone.
    /// </summary>
    /// <exception cref="ImageLockedException">Another opener conflicts with the request.</exception>
    public static void Lock(this IStorage storage, FileLockRequest request, FileLocking locking)
    {
        var effective = locking == FileLocking.Off ? FileLockRequest.None : request;
        switch (storage)
        {
            case FileStorage file:
                file.Lock(effective);
                break;
            case StreamStorage stream:
                stream.Lock(effective, locking);
                break;
        }
    }
}
