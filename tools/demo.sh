#!/usr/bin/env bash
# The main job on the committed sample: build the tool, show the image, convert it to raw and
# check the copy against the original.
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
echo "== qcow2 convert -O raw $sample sample.raw"
tools/qcow2 convert -p -O raw "$sample" "$out/sample.raw"
echo
echo "== qcow2 compare $sample sample.raw"
tools/qcow2 compare "$sample" "$out/sample.raw"
