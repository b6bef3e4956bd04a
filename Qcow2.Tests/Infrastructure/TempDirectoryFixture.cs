namespace QcowDedup.Qcow2.Tests.Infrastructure;

/// <summary>Gives every test its own empty directory, deleted afterwards.</summary>
public abstract class TempDirectoryFixture
{
    protected string Directory { get; private set; } = string.Empty;

    [SetUp]
    public void CreateDirectory()
    {
        Directory = Path.Combine(Path.GetTempPath(), "qcowdedup-tests", $"{GetType().Name}-{Guid.NewGuid():N}");
        System.IO.Directory.CreateDirectory(Directory);
        Qemu.WorkingDirectory.Value = Directory;
    }

    [TearDown]
    public void DeleteDirectory()
    {
        Qemu.WorkingDirectory.Value = null;
        if (System.IO.Directory.Exists(Directory))
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
    }

    protected string PathOf(string name) => Path.Combine(Directory, name);
}
