namespace QcowDedup.Cli;

/// <summary>
/// qemu-img's -p progress line, "    (12.34/100%)" rewritten in place with a carriage return.
/// Shown only on a terminal: redirected output stays clean for scripts.
/// </summary>
/// <summary>
/// Passes progress on as it is reported (on the copying thread), and holds that thread back when
/// the work runs ahead of a byte rate (qemu-img commit -r): fraction × total bytes per second.
/// </summary>
internal sealed class RateLimitedProgress(IProgress<double> inner, long bytesPerSecond, long totalBytes) : IProgress<double>
{
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();

    public void Report(double value)
    {
        inner.Report(value);
        if (bytesPerSecond > 0)
        {
            var ahead = TimeSpan.FromSeconds(value * totalBytes / bytesPerSecond) - _clock.Elapsed;
            if (ahead > TimeSpan.Zero)
            {
                Thread.Sleep(ahead);
            }
        }
    }
}

internal sealed class Progress : IProgress<double>
{
    private readonly bool _enabled;
    private double _last = -1;
    private bool _finished;

    public Progress(bool requested)
    {
        _enabled = requested; // on a pipe too, as qemu-img: a script asked for it
        Report(0);
    }

    public void Report(double fraction)
    {
        if (!_enabled)
        {
            return;
        }

        var percent = Math.Clamp(fraction * 100, 0, 100);
        if (percent - _last < 0.5 && percent < 100)
        {
            return;
        }

        _last = percent;
        Console.Out.Write(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"    ({percent:0.00}/100%)\r"));
        Console.Out.Flush();
    }

    /// <summary>Prints 100% and ends the line (once; later calls do nothing).</summary>
    public void Finish()
    {
        if (_enabled && !_finished)
        {
            _finished = true;
            Report(1);
            Console.Out.WriteLine();
        }
    }
}
