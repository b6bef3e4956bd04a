namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The parts of an image that exist only when it is open for writing, created together once the
/// read-write open has its writable state: the write path and the operations built on it.
/// </summary>
internal sealed class WriteSession
{
    public WriteSession(ImageSession session, WritableState state, GuestReader reader)
    {
        State = state;
        Writer = new GuestWriter(session, state, reader);
        Snapshots = new SnapshotOperations(session, state);
        Resizer = new Resizer(session, state, Writer);
        Checker = new ImageChecker(session, state);
    }

    public WritableState State { get; }

    public GuestWriter Writer { get; }

    public SnapshotOperations Snapshots { get; }

    public Resizer Resizer { get; }

    public ImageChecker Checker { get; }
}
