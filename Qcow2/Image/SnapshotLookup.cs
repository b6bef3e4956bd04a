namespace QcowDedup.Qcow2.Image;

/// <summary>
/// What a string given to find an internal snapshot is. Ids are unique, names are not, and a name
/// may well be another snapshot's id ("2"), so the caller says which one it means.
/// </summary>
public enum SnapshotLookup
{
    /// <summary>The snapshot whose id is the key.</summary>
    Id,

    /// <summary>The first snapshot, in table order, whose name is the key (what qemu-img snapshot -d matches).</summary>
    Name,

    /// <summary>
    /// The snapshot whose id is the key, else the first whose name is (what qemu-img snapshot -a
    /// and convert -s match).
    /// </summary>
    IdThenName,
}
