using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// One link of a backing chain as its headers describe it, read without opening any layer as
/// an image: what <c>qemu-img info --backing-chain</c> shows, and where it stops.
/// </summary>
/// <param name="Depth">0 for the image itself, 1 for its backing file, …</param>
/// <param name="Name">The name as stored in the referring image (the path given, at depth 0).</param>
/// <param name="Path">The full path the name leads to, or null when it is not a local file name.</param>
/// <param name="Format">"qcow2" or "raw" when known (stored or probed).</param>
/// <param name="Problem">Why the chain stops here: the file is missing, refused by the backing file policy, a loop, unreadable; null for a link that was read.</param>
public sealed record BackingChainLink(int Depth, string Name, string? Path, string? Format, string? Problem);

/// <summary>Follows backing file names from header to header, under the image's backing file policy.</summary>
internal static class BackingChainReader
{
    public static IReadOnlyList<BackingChainLink> Read(string path, Qcow2OpenOptions options)
    {
        // Only headers are read: no extension or allocator is attached to any layer.
        options = options with { Writable = false, BackingFiles = BackingFileMode.Ignore, Extensions = [], Allocator = null };
        var links = new List<BackingChainLink>();
        var chain = new ChainContext();
        string? name;
        string? format;
        string? referrer;
        using (var top = Qcow2Image.Open(path, options))
        {
            chain.Enter(top.Session.File);
            links.Add(new BackingChainLink(0, path, top.FilePath, "qcow2", null));
            (name, format, referrer) = (top.Header.BackingFileName, top.Header.BackingFormat, top.FilePath);
        }

        while (name is { } current)
        {
            var depth = links.Count;
            var resolved = DefaultBackingFileResolver.TryResolvePath(current, referrer);
            try
            {
                using var storage = ImageOpener.OpenImplicitFile(new FileReference(current, FileReferenceKind.BackingFile, referrer, Writable: false), options);
                chain.CheckCanEnter(storage, current);
                chain.Enter(storage);
                storage.Lock(options.ForceShare ? FileLockRequest.ForceShared : FileLockRequest.Image(writable: false), options.Locking);
                format ??= SyncOver.Run(ImageOpener.ProbeFormatAsync(storage, async: false, CancellationToken.None));
                links.Add(new BackingChainLink(depth, current, storage.Path ?? resolved, format, null));
                if (format != "qcow2")
                {
                    break;
                }

                var header = SyncOver.Run(ImageOpener.ReadHeaderClusterAsync(storage, async: false, CancellationToken.None));
                (name, format, referrer) = (header.BackingFileName, header.BackingFormat, storage.Path ?? resolved);
            }
            catch (Exception error) when (error is IOException or UnauthorizedAccessException or InvalidDataException or NotSupportedException)
            {
                links.Add(new BackingChainLink(depth, current, resolved, format, error.Message));
                break;
            }
        }

        return links;
    }
}
