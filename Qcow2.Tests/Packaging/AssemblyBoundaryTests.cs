using System.Runtime.CompilerServices;
using QcowDedup.Qcow2.Image;

namespace QcowDedup.Qcow2.Tests.Packaging;

/// <summary>Issue 10, acceptance 3: the dedup extension uses the core's public seam only.</summary>
[TestFixture]
public class AssemblyBoundaryTests
{
    [Test]
    public void The_core_grants_its_internals_to_the_tests_only()
    {
        var grantees = typeof(Qcow2Image).Assembly.GetCustomAttributes(typeof(InternalsVisibleToAttribute), inherit: false)
            .Cast<InternalsVisibleToAttribute>().Select(a => a.AssemblyName).ToList();
        grantees.ShouldBe(["QcowDedup.Qcow2.Tests"]);
    }
}
