#!/usr/bin/env bash
# Checks the native (ahead-of-time compiled) qcow2 tool on the formats it reads and writes through
# DiscUtils: DiscUtils predates trimming annotations, so the in-process tests (JIT) cannot show what
# the native build dropped. For each of vmdk, vhdx, vpc and vdi: qemu-img writes it and we convert it
# to qcow2, we write it from a qcow2, and qemu-img compare judges both. Prints "N passed, N failed".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/tools/qcow2" --version >/dev/null
native="$(ls "$root"/tools/.build/native-*/qcow2 2>/dev/null | head -n 1)"
[ -x "$native" ] || { echo "no native build (tools/.build/native-*/qcow2); is a C toolchain installed?" >&2; exit 1; }
cd "$work"
qemu-img create -q -f qcow2 src.qcow2 67M
qemu-io -c 'write -P 0x5a 0 3M' -c 'write -P 0x11 40M 64k' -c 'write -P 0xc3 66M 1M' src.qcow2 >/dev/null
passed=0; failed=0
check() { if "$@" >/dev/null 2>&1; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*" >&2; fi; }
for format in vmdk vhdx vpc vdi; do
  qemu-img convert -f qcow2 -O "$format" src.qcow2 "qemu.$format"
  check "$native" convert -f "$format" -O qcow2 "qemu.$format" "from-$format.qcow2"
  check qemu-img compare -f qcow2 -F qcow2 src.qcow2 "from-$format.qcow2"
  check "$native" convert -O "$format" src.qcow2 "ours.$format"
  check qemu-img compare -f qcow2 -F "$format" src.qcow2 "ours.$format"
  check "$native" compare -f "$format" -F qcow2 "qemu.$format" src.qcow2
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
