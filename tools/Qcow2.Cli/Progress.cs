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
    private readonly Lock _sync = new();
    private double _last = -1;
    private bool _finished;

    public Progress(bool requested)
    {
        _enabled = requested; // on a pipe too, as qemu-img: a script asked for it
        Report(0);
    }

    /// <summary>Prints the new percentage when it moved on by half a percent; safe from any thread, nothing after <see cref="Finish"/>.</summary>
    public void Report(double fraction)
    {
        lock (_sync)
        {
            if (!_enabled || _finished)
            {
                return;
            }

            Print(fraction);
        }
    }

    /// <summary>Prints 100% and ends the line (once; later calls do nothing).</summary>
    public void Finish()
    {
        lock (_sync)
        {
            if (_enabled && !_finished)
            {
                Print(1);
                _finished = true;
                Console.Out.WriteLine();
            }
        }
    }

    private void Print(double fraction)
    {
        var percent = Math.Clamp(fraction * 100, 0, 100);
        if (percent - _last < 0.5 && percent < 100)
        {
            return;
        }

        _last = Math.Max(_last, percent);
        Console.Out.Write(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"    ({percent:0.00}/100%)\r"));
        Console.Out.Flush();
    }
}
