using System.ComponentModel;
using System.Runtime.InteropServices;

namespace QcowDedup.Cli;

/// <summary>
/// A write-only stream over an inherited Unix file descriptor that calls write(2) and nothing
/// else. Not a FileStream: on a regular file FileStream writes with pwrite at offsets of its own
/// and leaves the descriptor's offset behind, so in "{ qcow2 info a; echo done; } > log" the
/// echo would overwrite what qcow2 wrote.
/// </summary>
internal sealed partial class DescriptorStream(int descriptor) : Stream
{
    private const int Interrupted = 4; // EINTR
    private const int BrokenPipe = 32; // EPIPE: .NET ignores SIGPIPE, so a closed pipe arrives as this error

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            var written = WriteDescriptor(descriptor, buffer, (nuint)buffer.Length);
            if (written < 0)
            {
                var error = Marshal.GetLastPInvokeError();
                if (error == Interrupted)
                {
                    continue;
                }

                if (error == BrokenPipe)
                {
                    // The reader is gone ("qcow2 map … | head"): drop the rest as .NET's console does.
                    return;
                }

                throw new IOException(new Win32Exception(error).Message, error);
            }

            buffer = buffer[(int)written..];
        }
    }

    public override void Flush()
    {
        // write(2) leaves nothing buffered here.
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteDescriptor(int descriptor, ReadOnlySpan<byte> buffer, nuint count);
}
