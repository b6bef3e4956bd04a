using QcowDedup.Qcow2.Image;

namespace QcowDedup.Cli.Commands;

/// <summary>
/// convert --bitmaps: the source's persistent bitmaps recreated in the target after the copy, with
/// their granularity, enabled state and bits, as qemu-img does (so the copy's own writes mark nothing).
/// QEMU walks a node's bitmaps newest first, so its messages name them in reverse directory order.
/// </summary>
internal static class BitmapCopy
{
    /// <summary>Why the source's bitmaps cannot be copied, checked before the target is created; null when they can.</summary>
    public static string? Refusal(DiskSource source, bool skipBroken)
    {
        if (source.Image is not { } image)
        {
            return "Source lacks bitmap support";
        }

        return skipBroken ? null : image.PersistentBitmaps.Reverse().FirstOrDefault(b => !b.Consistent) is { } broken
            ? $"Cannot copy inconsistent bitmap '{broken.Name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it"
            : null;
    }

    /// <summary>Copies every consistent bitmap (warning about the rest); returns QEMU's message for a failure, or null.</summary>
    public static string? Copy(Qcow2Image source, Qcow2Image target)
    {
        var bitmaps = source.PersistentBitmaps;
        foreach (var broken in bitmaps.Reverse().Where(b => !b.Consistent))
        {
            Console.Error.WriteLine($"qcow2: warning: Skipping inconsistent bitmap '{broken.Name}'");
        }

        if (bitmaps.Reverse().FirstOrDefault(b => b.Consistent && target.PersistentBitmaps.Any(t => t.Name == b.Name)) is { } taken)
        {
            return $"Failed to create bitmap {taken.Name}: Bitmap already exists: {taken.Name}";
        }

        foreach (var bitmap in bitmaps.Where(b => b.Consistent))
        {
            try
            {
                target.AddBitmap(bitmap.Name, bitmap.Granularity, bitmap.Enabled);
            }
            catch (BitmapException error)
            {
                return $"Failed to create bitmap {bitmap.Name}: {error.Message}";
            }

            try
            {
                target.MergeBitmap(bitmap.Name, bitmap.Name, source);
            }
            catch (BitmapException error)
            {
                target.RemoveBitmap(bitmap.Name);
                return $"Failed to populate bitmap {bitmap.Name}: {error.Message}";
            }
        }

        return null;
    }
}
