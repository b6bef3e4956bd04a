using System.Diagnostics;
using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Xml.Linq;
using QcowDedup.Qcow2.Image;
using QcowDedup.Qcow2.Tests.Infrastructure;

namespace QcowDedup.Qcow2.Tests.Packaging;

/// <summary>
/// The NuGet packages install from a local folder on a machine that has only the .NET SDK: the
/// qcow2 tool runs, and a fresh project restores the library package, builds and opens an image.
/// Every step runs with its own NuGet package folder and config, so neither a stale 0.1.0 in the
/// user's cache nor any other feed can stand in for what was just packed.
/// </summary>
[TestFixture]
[Category("Packaging")]
[NonParallelizable]
public class PackageTests : TempDirectoryFixture
{
    private const string LibraryId = "QcowDedup.Qcow2";
    private const string DedupId = "QcowDedup.Qcow2.Dedup";
    private const string DiscUtilsId = "QcowDedup.Qcow2.DiscUtils";
    private const string ToolId = "QcowDedup.Cli";
    private static readonly TimeSpan StepTimeout = TimeSpan.FromMinutes(5);

    private string _work = string.Empty;
    private string _feed = string.Empty;

    private static string Version { get; } =
        typeof(Qcow2Image).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()!.InformationalVersion.Split('+')[0];

    private static string RepositoryRoot { get; } = FindRepositoryRoot();

    private static string Sample => Path.Combine(RepositoryRoot, "testdata", "sample.qcow2");

    /// <summary>
    /// Packs the four packable projects (not the solution: that would rebuild this running test
    /// assembly) with build output under a temporary artifacts folder, leaving the work tree's
    /// bin/ and obj/ alone.
    /// </summary>
    [OneTimeSetUp]
    public void Pack()
    {
        _work = Path.Combine(Path.GetTempPath(), "qcowdedup-tests", $"packaging-{Guid.NewGuid():N}");
        _feed = Path.Combine(_work, "feed");
        var artifacts = Path.Combine(_work, "artifacts");
        string[] common = ["-c", "Release", "-o", _feed, "--artifacts-path", artifacts, "-nologo", "-p:UseSharedCompilation=false"];
        Dotnet(RepositoryRoot, null, ["pack", Path.Combine("tools", "Qcow2.Cli", "Qcow2.Cli.csproj"), .. common]);
        Dotnet(RepositoryRoot, null, ["pack", Path.Combine("Qcow2", "Qcow2.csproj"), "--no-build", .. common]);
        Dotnet(RepositoryRoot, null, ["pack", Path.Combine("Qcow2.Dedup", "Qcow2.Dedup.csproj"), "--no-build", .. common]);
        Dotnet(RepositoryRoot, null, ["pack", Path.Combine("Qcow2.DiscUtils", "Qcow2.DiscUtils.csproj"), "--no-build", .. common]);
    }

    [OneTimeTearDown]
    public void DeleteWork()
    {
        if (System.IO.Directory.Exists(_work))
        {
            System.IO.Directory.Delete(_work, recursive: true);
        }
    }

    [TestCase(LibraryId, "lib/net10.0/QcowDedup.Qcow2.xml")]
    [TestCase(DedupId, "lib/net10.0/QcowDedup.Qcow2.Dedup.xml")]
    [TestCase(DiscUtilsId, "lib/net10.0/QcowDedup.Qcow2.DiscUtils.xml")]
    [TestCase(ToolId, "tools/net10.0/any/DotnetToolSettings.xml")]
    public void Each_package_carries_readme_license_and_documentation(string id, string payload)
    {
        using var package = ZipFile.OpenRead(Path.Combine(_feed, $"{id}.{Version}.nupkg"));
        var entries = package.Entries.Select(e => e.FullName).ToList();
        entries.ShouldContain(payload);
        entries.ShouldContain("README.md");
        Read(package, "LICENSE").ShouldContain("Copyright (c) 2026 The QcowDedup authors");

        var metadata = XDocument.Parse(Read(package, $"{id}.nuspec")).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
        string? Field(string name) => metadata.Elements().SingleOrDefault(e => e.Name.LocalName == name)?.Value;
        metadata.ShouldSatisfyAllConditions(
            () => Field("id").ShouldBe(id),
            () => Field("version").ShouldBe(Version),
            () => Field("license").ShouldBe("MIT"),
            () => Field("readme").ShouldBe("README.md"),
            () => Field("description").ShouldNotBeNullOrWhiteSpace(),
            () => Field("tags").ShouldNotBeNull().ShouldContain("qcow2"));
        var packageTypes = metadata.Descendants().Where(e => e.Name.LocalName == "packageType").Select(e => (string?)e.Attribute("name")).ToList();
        packageTypes.ShouldBe(id == ToolId ? ["DotnetTool"] : []);
    }

    [Test]
    public void Tool_installs_from_the_folder_and_runs_qcow2_info()
    {
        var tools = PathOf("tools");
        var config = WriteNuGetConfig(Directory);
        Dotnet(Directory, PathOf("packages"), ["tool", "install", "--tool-path", tools, "--configfile", config, "--add-source", _feed, ToolId, "--version", Version]);

        var info = Run(Path.Combine(tools, "qcow2"), Directory, PathOf("packages"), ["info", Sample]);
        info.ExitCode.ShouldBe(0, info.Error);
        info.Output.ShouldContain("file format: qcow2\n");
        info.Output.ShouldContain($"({SampleSize()} bytes)\n");

        // The tool package carries DiscUtils for vmdk/vhdx/vpc/vdi.
        Qemu.Img("convert", "-f", "qcow2", "-O", "vdi", Sample, PathOf("sample.vdi"));
        var vdi = Run(Path.Combine(tools, "qcow2"), Directory, PathOf("packages"), ["compare", PathOf("sample.vdi"), Sample]);
        vdi.ExitCode.ShouldBe(0, vdi.Error);
    }

    [Test]
    public void A_new_project_restores_the_DiscUtils_package_and_opens_a_qcow2_with_VirtualDisk()
    {
        // DiscUtils itself comes from the gallery elsewhere; here from the vendored copy of it.
        var project = BuildConsumer("discutils-consumer", DiscUtilsId, """
            using DiscUtils;
            using QcowDedup.Qcow2.DiscUtils;

            Qcow2DiscUtils.Register();
            using var disk = VirtualDisk.OpenDisk(args[0], FileAccess.Read);
            Console.WriteLine($"{disk.DiskTypeInfo.Name} {disk.Capacity}");
            """, Path.Combine(RepositoryRoot, "vendor", "nuget"));
        var run = Dotnet(project, PathOf("packages"), ["run", "-c", "Release", "--no-build", "--", Sample]);
        run.Output.ShouldBe($"QCOW2 {SampleSize()}\n");
    }

    [Test]
    public void A_new_project_restores_the_library_package_without_warnings_and_opens_an_image()
    {
        var project = BuildConsumer("consumer", DedupId, """
            using QcowDedup.Qcow2.Dedup;
            using QcowDedup.Qcow2.Image;

            using var image = Qcow2Image.Open(args[0], new Qcow2OpenOptions().WithDedup(new DedupOptions { Enable = false }));
            Console.WriteLine($"virtual size: {image.Size}");
            """);
        // The library came in through the dedup package's dependency, at the packed version.
        System.IO.Directory.Exists(Path.Combine(PathOf("packages"), LibraryId.ToLowerInvariant(), Version)).ShouldBeTrue();

        var run = Dotnet(project, PathOf("packages"), ["run", "-c", "Release", "--no-build", "--", Sample]);
        run.Output.ShouldBe($"virtual size: {SampleSize()}\n");
    }

    private static long SampleSize()
    {
        using var image = Qcow2Image.Open(Sample);
        return image.Size;
    }

    /// <summary>
    /// A new console project referencing <paramref name="packageId"/> at the packed version, with
    /// <paramref name="program"/> as its Program.cs, built warning-free against its own package folder.
    /// </summary>
    private string BuildConsumer(string name, string packageId, string program, string? extraSource = null)
    {
        var project = PathOf(name);
        System.IO.Directory.CreateDirectory(project);
        // Empty Directory.* files stop MSBuild from importing any found further up the temp path.
        foreach (var file in new[] { "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props" })
        {
            File.WriteAllText(Path.Combine(project, file), "<Project />\n");
        }

        WriteNuGetConfig(project, extraSource);
        File.WriteAllText(Path.Combine(project, "Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="{packageId}" Version="{Version}" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(project, "Program.cs"), program);

        var build = Dotnet(project, PathOf("packages"), ["build", "-c", "Release", "-nologo", "-p:UseSharedCompilation=false"]);
        build.Output.ShouldNotContain(": warning ", Case.Insensitive);
        return project;
    }

    /// <summary>
    /// A consumer's nuget.config: our packed folder (and <paramref name="extraSource"/>) on top of the
    /// machine's own sources, from which third-party dependencies (ZstdSharp.Port) restore as for any user.
    /// </summary>
    private string WriteNuGetConfig(string directory, string? extraSource = null)
    {
        var path = Path.Combine(directory, "nuget.config");
        var extra = extraSource is null ? string.Empty : $"""<add key="extra" value="{extraSource}" />""";
        File.WriteAllText(path, $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="local" value="{_feed}" />
                {extra}
              </packageSources>
            </configuration>
            """);
        return path;
    }

    private static string Read(ZipArchive package, string name)
    {
        using var reader = new StreamReader(package.GetEntry(name).ShouldNotBeNull().Open(), Encoding.UTF8);
        return reader.ReadToEnd();
    }

    private static ProcessResult Dotnet(string directory, string? packages, string[] args)
    {
        var result = Run(DotnetPath(), directory, packages, args);
        result.ExitCode.ShouldBe(0, $"dotnet {string.Join(' ', args)}\n{result.Output}\n{result.Error}");
        return result;
    }

    /// <summary>
    /// Runs a process with a clean .NET environment (no MSBuild variables inherited from the test
    /// host, no build servers that would outlive it) and, when given, its own package folder.
    /// </summary>
    private static ProcessResult Run(string program, string directory, string? packages, string[] args)
    {
        var start = new ProcessStartInfo(program) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        args.ToList().ForEach(start.ArgumentList.Add);
        foreach (var name in start.Environment.Keys.Where(k => k.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase) || k.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            start.Environment.Remove(name);
        }

        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        start.Environment["DOTNET_ROOT"] = Path.GetDirectoryName(DotnetPath());
        if (packages is not null)
        {
            start.Environment["NUGET_PACKAGES"] = packages;
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start {program}.");
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(StepTimeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{program} {string.Join(' ', args)} did not finish within {StepTimeout}.");
        }

        process.WaitForExit();
        return new ProcessResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>The dotnet host running the SDK: DOTNET_HOST_PATH when the SDK set it, else the one on PATH (symlinks resolved).</summary>
    private static string DotnetPath()
    {
        if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host))
        {
            return host;
        }

        foreach (var directory in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(Path.PathSeparator))
        {
            var candidate = new FileInfo(Path.Combine(directory, "dotnet"));
            if (candidate.Exists)
            {
                return candidate.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? candidate.FullName;
            }
        }

        throw new InvalidOperationException("dotnet is not on PATH.");
    }

    /// <summary>The work tree holding QcowDedup.sln, found upwards from the test assembly (bin/CONFIG/net10.0).</summary>
    private static string FindRepositoryRoot()
    {
        for (var directory = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "QcowDedup.sln")))
            {
                return directory.FullName;
            }
        }

        throw new InvalidOperationException($"No QcowDedup.sln above {TestContext.CurrentContext.TestDirectory}.");
    }
}
