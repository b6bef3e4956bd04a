namespace QcowDedup.Cli;

/// <summary>
/// The one line on stderr that reports a failed command: "qcow2 VERB: …" for a wrong command
/// line, "qcow2: …" for what went wrong with an image or a file, and "qcow2: internal error …"
/// for a bug. Never a stack trace: a user can do nothing with one, and a bug report needs only
/// the command line and this line.
/// </summary>
internal static class ErrorReport
{
    public static string Line(string verb, Exception error) => OneLine(Unwrap(error) switch
    {
        UsageException usage => $"qcow2 {verb}: {usage.Message}",
        var known when IsImageOrFileError(known) => $"qcow2: {Describe(known)}",
        var other => $"qcow2: internal error ({other.GetType().Name}): {other.Message.ReplaceLineEndings(" ")}",
    });

    /// <summary>
    /// The failure inside an AggregateException from parallel work (compressing or hashing on every
    /// core): each worker meets the same problem, and the user needs to hear it once.
    /// </summary>
    private static Exception Unwrap(Exception error)
    {
        while (error is AggregateException aggregate && aggregate.Flatten().InnerExceptions is [var first, ..] inner &&
               inner.All(e => e.GetType() == first.GetType() && e.Message == first.Message))
        {
            error = first;
        }

        return error;
    }

    /// <summary>
    /// Control characters escaped: a file name an image carries may hold a newline (or a terminal
    /// escape), and the report must stay one line that shows the name as it is.
    /// </summary>
    private static string OneLine(string line)
    {
        if (!line.Any(char.IsControl))
        {
            return line;
        }

        var escaped = new System.Text.StringBuilder(line.Length + 8);
        foreach (var c in line)
        {
            escaped.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                _ when char.IsControl(c) => $"\\x{(int)c:x2}",
                _ => c.ToString(),
            });
        }

        return escaped.ToString();
    }

    /// <summary>
    /// The exceptions the library documents for bad images, files and arguments. A null argument
    /// or a disposed object is a bug in this program, not the user's input.
    /// </summary>
    private static bool IsImageOrFileError(Exception error) => error switch
    {
        ArgumentNullException or ObjectDisposedException => false,
        IOException or InvalidDataException or NotSupportedException or UnauthorizedAccessException => true,
        ArgumentException or KeyNotFoundException or InvalidOperationException => true,
        _ => false,
    };

    private static string Describe(Exception error) => ImageOpts.ShowAsGiven(error switch
    {
        QcowDedup.Qcow2.Storage.ImageLockedException locked => $"Could not open '{locked.FilePath}': {locked.Message}",
        FileNotFoundException missing when missing.FileName is not null && !missing.Message.Contains(missing.FileName, StringComparison.Ordinal) => $"Could not open '{missing.FileName}': {missing.Message}",
        ArgumentException argument => WithoutParameterName(argument),
        _ => error.Message,
    });

    /// <summary>
    /// The library's argument message without what .NET appends for programmers: " (Parameter 'options')"
    /// and, for a value out of range, a second line "Actual value was …".
    /// </summary>
    private static string WithoutParameterName(ArgumentException error)
    {
        var message = error.Message;
        if (error is ArgumentOutOfRangeException { ActualValue: not null } && message.LastIndexOf('\n') is var newline and >= 0)
        {
            message = message[..newline];
        }

        var suffix = $" (Parameter '{error.ParamName}')";
        return error.ParamName is not null && message.EndsWith(suffix, StringComparison.Ordinal) ? message[..^suffix.Length] : message;
    }
}
