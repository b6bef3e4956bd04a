using QcowDedup.Cli;

namespace QcowDedup.Qcow2.Tests.Cli;

/// <summary>
/// What a failed command prints: one line, the verb for a wrong command line, the library's own
/// words for a bad image or file without .NET's additions, and "internal error" for a bug.
/// </summary>
[TestFixture]
public class ErrorReportTests
{
    [Test]
    public void A_wrong_command_line_names_the_verb()
    {
        ErrorReport.Line("create", new UsageException("Invalid parameter 'x'")).ShouldBe("qcow2 create: Invalid parameter 'x'");
    }

    [Test]
    public void A_library_argument_error_loses_the_parameter_name_and_actual_value()
    {
        ErrorReport.Line("resize", new ArgumentException("The size must be a multiple of 512.", "options"))
            .ShouldBe("qcow2: The size must be a multiple of 512.");
        ErrorReport.Line("resize", new ArgumentOutOfRangeException("newSize", -5, "The size may not be negative."))
            .ShouldBe("qcow2: The size may not be negative.");
    }

    [Test]
    public void A_missing_file_is_named()
    {
        ErrorReport.Line("info", new FileNotFoundException("No such file or directory", "a.qcow2"))
            .ShouldBe("qcow2: Could not open 'a.qcow2': No such file or directory");
    }

    [Test]
    public void A_bug_is_an_internal_error_on_one_line()
    {
        Exception[] bugs =
        [
            new FormatException("first line\nsecond line"),
            new ArgumentNullException("options", "first line\nsecond line"),
            new ObjectDisposedException("image", "first line\nsecond line"),
            new OverflowException("first line\nsecond line"),
        ];

        bugs.ShouldAllBe(bug => ErrorReport.Line("map", bug).StartsWith($"qcow2: internal error ({bug.GetType().Name}): first line second line", StringComparison.Ordinal));
        bugs.ShouldAllBe(bug => !ErrorReport.Line("map", bug).Contains('\n', StringComparison.Ordinal));
    }

    [Test]
    public void The_same_failure_from_every_parallel_worker_is_reported_once_as_itself()
    {
        var missing = new NotSupportedException("Writing deflate-compressed qcow2 clusters needs zlib.");
        ErrorReport.Line("convert", new AggregateException(missing, new NotSupportedException(missing.Message)))
            .ShouldBe("qcow2: Writing deflate-compressed qcow2 clusters needs zlib.");
        ErrorReport.Line("convert", new AggregateException(new AggregateException(missing)))
            .ShouldBe("qcow2: Writing deflate-compressed qcow2 clusters needs zlib.");

        // Different failures stay an aggregate: nothing is hidden.
        ErrorReport.Line("convert", new AggregateException(missing, new FormatException("other")))
            .ShouldStartWith("qcow2: internal error (AggregateException)");
    }
}
