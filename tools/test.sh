#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs QEMU's qemu-utils (the test oracle),
# libzstd, and the FAT/NTFS tools the DiscUtils tests build fixtures with, when missing; builds,
# runs every test, and ends with "N passed, N failed, N skipped".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || missing+=(qemu-utils)
ldconfig -p 2>/dev/null | grep -q 'libzstd\.so\.1' || missing+=(libzstd1)
# File systems made outside our code for the DiscUtils tests: FAT (dosfstools, mtools) and NTFS (ntfs-3g).
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
has mkfs.fat || missing+=(dosfstools)
has mcopy || missing+=(mtools)
has mkntfs && has ntfscp || missing+=(ntfs-3g)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]} (qemu-img and qemu-io are the tests' oracle; the file system tools build fixtures)..."
  as_root apt-get update -qq || true
  as_root apt-get install -y -qq "${missing[@]}" >/dev/null || echo "warning: could not install ${missing[*]}; oracle tests will fail" >&2
fi

results="$root/TestResults"
rm -rf "$results"
dotnet build QcowDedup.sln -c Release -nologo -v quiet
set +e
dotnet test QcowDedup.sln -c Release --no-build -nologo \
  --logger "trx;LogFilePrefix=results" --logger "console;verbosity=${QCOWDEDUP_TEST_VERBOSITY:-minimal}" \
  --results-directory "$results" "$@"
status=$?
set -e

passed=0; failed=0; skipped=0
for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  counters="$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)"
  value() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  passed=$((passed + $(value passed)))
  failed=$((failed + $(value failed) + $(value error) + $(value timeout) + $(value aborted)))
  skipped=$((skipped + $(value notExecuted)))
done
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # the run itself broke (build, crash) without a per-test failure
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
