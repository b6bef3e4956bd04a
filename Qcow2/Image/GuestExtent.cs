namespace QcowDedup.Qcow2.Image;

/// <summary>What backs a range of guest bytes in one image (not looking into backing files).</summary>
public enum ExtentKind
{
    /// <summary>Data stored in this image (plain or compressed clusters).</summary>
    Allocated,

    /// <summary>Reads as zeros because of this image's metadata (zero clusters or subclusters).</summary>
    Zero,

    /// <summary>Not allocated here; reads come from the backing file.</summary>
    Backing,

    /// <summary>Not allocated anywhere; reads as zeros.</summary>
    Unallocated,
}

/// <summary>A run of guest bytes with one <see cref="ExtentKind"/>.</summary>
/// <param name="Start">First guest byte.</param>
/// <param name="Length">Length in bytes.</param>
/// <param name="Kind">What backs the bytes.</param>
/// <param name="HostOffset">Where the bytes are in the image file (or data file), when they have a host location.</param>
/// <param name="IsCompressed">Whether the data is in a compressed cluster (then there is no host offset).</param>
public readonly record struct GuestExtent(long Start, long Length, ExtentKind Kind, long? HostOffset, bool IsCompressed)
{
    /// <summary>One past the last byte.</summary>
    public long End => Start + Length;
}

/// <summary>
/// One entry of a block-status map through the whole backing chain, with the meaning of
/// qemu-img map --output=json.
/// </summary>
/// <param name="Start">First guest byte.</param>
/// <param name="Length">Length in bytes.</param>
/// <param name="Depth">Chain depth of the layer that decides the bytes (0 = this image).</param>
/// <param name="Present">Whether some layer allocates the bytes.</param>
/// <param name="Zero">Whether the bytes read as zeros.</param>
/// <param name="Data">Whether the bytes are read from a file's data.</param>
/// <param name="Offset">Offset in <paramref name="File"/>, when the location is known.</param>
/// <param name="File">File holding the bytes (the image, a data file or a backing file).</param>
public readonly record struct MapEntry(long Start, long Length, int Depth, bool Present, bool Zero, bool Data, long? Offset, string? File)
{
    /// <summary>One past the last byte.</summary>
    public long End => Start + Length;
}
