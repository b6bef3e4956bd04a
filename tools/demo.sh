#!/usr/bin/env bash
# The main job on the committed sample: build the tool, deduplicate testdata/sample.qcow2 into a
# new image (printing what it saved), show the dedup statistics and check the copy against the
# original.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v dotnet >/dev/null 2>&1; then
  echo "demo: the .NET 10 SDK is required (https://dotnet.microsoft.com/download)" >&2
  exit 1
fi
sample="testdata/sample.qcow2"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== qcow2 info $sample"
tools/qcow2 info "$sample"
echo
echo "== qcow2 convert -p -O qcow2 -o dedup=on $sample dedup.qcow2"
tools/qcow2 convert -p -O qcow2 -o dedup=on "$sample" "$out/dedup.qcow2"
echo
echo "== qcow2 info dedup.qcow2"
tools/qcow2 info "$out/dedup.qcow2"
echo
echo "== qcow2 compare $sample dedup.qcow2"
tools/qcow2 compare "$sample" "$out/dedup.qcow2"
if command -v qemu-img >/dev/null 2>&1; then
  echo
  echo "== qemu-img check dedup.qcow2"
  qemu-img check "$out/dedup.qcow2"
fi
echo
echo "sample: $(du -k "$sample" | cut -f1) KiB on disk; deduplicated copy: $(du -k "$out/dedup.qcow2" | cut -f1) KiB"
