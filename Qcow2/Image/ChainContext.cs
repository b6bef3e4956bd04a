using QcowDedup.Qcow2.Format;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Image;

/// <summary>
/// The files already opened along a backing chain, by identity (device and inode) where the
/// system tells it, so that a loop through a symbolic or hard link is found like a plain one.
/// </summary>
internal sealed class ChainContext
{
    /// <summary>
    /// Most backing files below one image. QEMU sets no limit (it opens 800-deep chains), but a
    /// hostile chain must end in a clear error, not in running out of file descriptors.
    /// </summary>
    public const int MaxDepth = 1024;

    private readonly List<(string Name, FileIdentity? Identity)> _files = [];

    public void Enter(IStorage storage) => _files.Add((storage.Path ?? "(stream)", (storage as FileStorage)?.Identity));

    /// <summary>Refuses a file that is already in the chain, or a chain grown past <see cref="MaxDepth"/>.</summary>
    public void CheckCanEnter(IStorage storage, string name)
    {
        var key = (storage.Path ?? name, (storage as FileStorage)?.Identity);
        if (_files.Any(f => key.Item2 is { } identity ? f.Identity == identity : string.Equals(f.Name, key.Item1, StringComparison.Ordinal)))
        {
            throw Qcow2Corruption.Create("backing chain", $"loop: {Describe()} -> {key.Item1}");
        }

        if (_files.Count > MaxDepth)
        {
            throw new NotSupportedException($"The backing chain of {_files[0].Name} is deeper than {MaxDepth} backing files.");
        }

        EnsureStack();
    }

    /// <summary>
    /// Opening, reading and mapping recurse once per layer of the chain. A thread without stack
    /// for one more layer gets a clear error instead of a stack overflow, which no caller could catch.
    /// </summary>
    /// <exception cref="NotSupportedException">Too little stack is left.</exception>
    public static void EnsureStack()
    {
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
        {
            throw new NotSupportedException("The backing chain is too deep for this thread's stack; use a thread with a larger stack.");
        }
    }

    public string Describe() => string.Join(" -> ", _files.Select(f => f.Name));
}
