namespace QcowDedup.Qcow2.Format;

/// <summary>
/// Builds the exception thrown for corrupt images. <see cref="InvalidDataException"/> is sealed, so
/// instead of a derived type every corruption is an InvalidDataException whose message names the
/// structure, the problem and the host offset, and whose <see cref="Exception.Data"/> carries
/// <see cref="StructureKey"/> and <see cref="HostOffsetKey"/> for programs that want them.
/// </summary>
public static class Qcow2Corruption
{
    /// <summary>Key in <see cref="Exception.Data"/> of the structure name, e.g. "L2 table".</summary>
    public const string StructureKey = "qcow2.structure";

    /// <summary>Key in <see cref="Exception.Data"/> of the structure's host offset (a long), when known.</summary>
    public const string HostOffsetKey = "qcow2.host-offset";

    /// <summary>An exception for a corrupt <paramref name="structure"/> at <paramref name="hostOffset"/>.</summary>
    public static InvalidDataException Create(string structure, string problem, long? hostOffset = null)
    {
        var message = hostOffset is long offset
            ? $"qcow2 {structure} at 0x{offset:x}: {problem}"
            : $"qcow2 {structure}: {problem}";
        var exception = new InvalidDataException(message);
        exception.Data[StructureKey] = structure;
        if (hostOffset is long at)
        {
            exception.Data[HostOffsetKey] = at;
        }

        return exception;
    }
}
