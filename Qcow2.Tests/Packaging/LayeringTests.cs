using System.Reflection;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Storage;

namespace QcowDedup.Qcow2.Tests.Packaging;

/// <summary>
/// Issue 10, acceptance 3: metadata bytes are written by the Metadata layer only, which applies
/// the ordering rules. Above it (Image, Check) storage writes are allowed only where guest data or
/// a raw file is written, each listed here with its reason; a new write of metadata bytes above
/// Metadata fails this test.
/// </summary>
[TestFixture]
public class LayeringTests
{
    private static readonly string[] WritingMembers = ["Write", "WriteAsync", "SetLength", "Reserve"];

    /// <summary>Types above Metadata that write guest data (never metadata), and why.</summary>
    private static readonly Dictionary<string, string> GuestDataWriters = new(StringComparer.Ordinal)
    {
        [typeof(GuestWriter).FullName!] = "guest data clusters, after the overlap guard",
        [typeof(Resizer).FullName!] = "preallocated data clusters (zeros, reserved space or holes)",
        [typeof(ChainOperations).FullName!] = "commit into a raw backing file",
        [typeof(ImageCopier).FullName!] = "convert into a raw file",
        [typeof(ImageCreator).FullName!] = "empties the file being created, sizes a new raw data file",
    };

    private static readonly string[] AboveMetadata = ["QcowDedup.Qcow2.Image", "QcowDedup.Qcow2.Check"];

    [Test]
    public void No_type_above_Metadata_writes_metadata_to_storage()
    {
        var offenders = StorageWrites()
            .Where(call => AboveMetadata.Contains(call.Owner.Namespace) && !GuestDataWriters.ContainsKey(call.Owner.FullName!))
            .Select(call => $"{call.Owner.FullName}.{call.Caller} calls {call.Callee}")
            .Distinct()
            .ToList();
        offenders.ShouldBeEmpty();
    }

    [Test]
    public void The_scan_sees_the_writes_it_allows()
    {
        // Guards the test above against a scanner that finds nothing: the guest data writers and
        // the Metadata layer do call storage writes.
        var owners = StorageWrites().Select(call => call.Owner.FullName!).ToHashSet();
        owners.ShouldContain(typeof(GuestWriter).FullName!);
        owners.ShouldContain("QcowDedup.Qcow2.Metadata.WritableMetadata");
        owners.ShouldContain("QcowDedup.Qcow2.Metadata.ImageMetadata");
    }

    [Test]
    public void No_Check_type_takes_an_Image_layer_type()
    {
        // Check/repair takes the Metadata layer's inputs (the image's metadata, its refcount
        // allocator, the repair writer), never the engine's state: no Check type, nested and
        // compiler-generated ones included, has a field, constructor or method parameter or a
        // return value whose type (or a type argument of it) lives in the Image layer.
        var checkTypes = typeof(Qcow2Image).Assembly.GetTypes().Where(t => t.Namespace == "QcowDedup.Qcow2.Check").ToList();
        checkTypes.ShouldNotBeEmpty();
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var offenders = (
            from type in checkTypes
            from used in type.GetFields(all).Select(f => (Member: f.Name, f.FieldType))
                .Concat(type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all))
                    .SelectMany(m => m.GetParameters().Select(p => (Member: m.Name, p.ParameterType))
                        .Concat(m is MethodInfo method ? [(Member: m.Name, method.ReturnType)] : [])))
            where Mentions(used.Item2, "QcowDedup.Qcow2.Image")
            select $"{type.FullName}.{used.Member}: {used.Item2}").Distinct().ToList();
        offenders.ShouldBeEmpty();
    }

    private static bool Mentions(Type type, string ns) =>
        type.Namespace == ns
        || (type.HasElementType && Mentions(type.GetElementType()!, ns))
        || (type.IsGenericType && type.GetGenericArguments().Any(a => Mentions(a, ns)));

    private static IEnumerable<(Type Owner, string Caller, string Callee)> StorageWrites() =>
        IlCalls.Of(typeof(Qcow2Image).Assembly)
            .Where(call => IsStorageWrite(call.Callee))
            .Select(call => (IlCalls.Outermost(call.Caller.DeclaringType!), call.Caller.Name, $"{call.Callee.DeclaringType!.Name}.{call.Callee.Name}"));

    private static bool IsStorageWrite(MethodBase method) =>
        WritingMembers.Contains(method.Name)
        && (typeof(IStorage).IsAssignableFrom(method.DeclaringType)
            || (method.IsStatic && method.GetParameters() is [{ ParameterType: var first }, ..] && first == typeof(IStorage)));
}
