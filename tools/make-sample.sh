#!/usr/bin/env bash
# Recreates testdata/sample.qcow2 with qemu-img: a 32 MiB disk holding text, repeated binary
# blocks (duplicates for the dedup demo), zero runs and a little unique random data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
raw="$work/sample.raw"
qemu-img create -q -f raw "$raw" 32M
for i in 0 1 2 3; do
  head -c 65536 /dev/urandom > "$work/block$i"
done
# Each of four 64 KiB blocks appears several times, near and far apart.
offsets=(0:0 1:1 0:2 2:5 3:9 0:17 1:33 2:65 3:129 0:257 1:300 2:301 3:400 0:450 1:480 2:500)
for pair in "${offsets[@]}"; do
  block="${pair%%:*}"; cluster="${pair##*:}"
  dd if="$work/block$block" of="$raw" bs=65536 seek="$cluster" conv=notrunc status=none
done
head -c 131072 /dev/urandom | dd of="$raw" bs=65536 seek=200 conv=notrunc status=none
for _ in $(seq 3072); do echo "qcow2 sample text: the quick brown fox jumps over the lazy dog"; done | head -c 196608 > "$work/text"
dd if="$work/text" of="$raw" bs=65536 seek=100 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$raw" "$root/testdata/sample.qcow2"
qemu-img info "$root/testdata/sample.qcow2"
