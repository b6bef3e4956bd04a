namespace QcowDedup.Qcow2.Storage;

/// <summary>
/// What a user of a file may do with it, in QEMU's terms (include/block/block-common.h). QEMU
/// publishes the permissions each opener holds, and those it does not share with others, as
/// locks on single bytes of the file, so every QEMU process and this library see each other.
/// </summary>
[Flags]
public enum BlockPermissions
{
    /// <summary>No permission.</summary>
    None = 0,

    /// <summary>Reads return consistent data ("consistent read").</summary>
    ConsistentRead = 0x01,

    /// <summary>Writes may change the content ("write").</summary>
    Write = 0x02,

    /// <summary>Writes that never change what a reader sees ("write unchanged").</summary>
    WriteUnchanged = 0x04,

    /// <summary>The file may change its length ("resize").</summary>
    Resize = 0x08,

    /// <summary>Every permission.</summary>
    All = ConsistentRead | Write | WriteUnchanged | Resize,
}
