#!/usr/bin/env bash
# Issue 11, acceptance 2: a tree copied twice through a FAT32 file system (DiscUtils) onto a
# 4 KiB-cluster image, without and with dedup: time, fsyncs per GiB written, host clusters, and a
# file-by-file check of what was written. DiscUtils restores from vendor/nuget. Usage: tools/fsbench.sh [FILES=1500] [CLUSTER_SIZE=4096] [ROUNDS=3]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${FSBENCH_DIR:-$(mktemp -d /dev/shm/qcowdedup-fsbench.XXXXXX 2>/dev/null || mktemp -d)}"
trap 'rm -rf "$work"' EXIT
dotnet build "$root/tools/Qcow2.FsBench" -c Release -nologo -v quiet >/dev/null
dotnet "$root/tools/Qcow2.FsBench/bin/Release/net10.0/Qcow2.FsBench.dll" "$work" "${1:-1500}" "${2:-4096}" "${3:-3}"
