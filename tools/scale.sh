#!/usr/bin/env bash
# Scaling (issue 11, acceptance 5): time and peak RSS of 1, 4 and 16 GiB raw->qcow2 converts, ours
# and qemu-img's side by side, and of opening 1 GiB and 1 TiB sparse images (info, check), which
# must not depend on the virtual size. Writes docs/PERFORMANCE.scaling.md (tools/bench.sh includes it).
#
#   tools/scale.sh [SIZES_GIB...]   default "1 4 16"; BENCH_DIR picks the scratch directory (default
#                                   /var/tmp: 16 GiB in and out does not fit a 24 GiB tmpfs)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1 4 16)
work="${BENCH_DIR:-/var/tmp}/qcowdedup-scale-$$"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
name=scale
# shellcheck source=tools/bench-common.sh
. "$root/tools/bench-common.sh"
read -r -a our <<<"$ours"

# measure CMD...: prints "seconds rss_mb" of one whole-process run
measure() {
  sync
  /usr/bin/time -f "%e %M" -o "$work/.t" "$@" >/dev/null
  awk '{printf "%.2f %.0f\n", $1, $2 / 1024}' "$work/.t"
}
# mean_ms N CMD...: mean wall milliseconds of N runs
mean_ms() {
  local n="$1" start end; shift
  start=$(date +%s%N)
  for ((j = 0; j < n; j++)); do "$@" >/dev/null; done
  end=$(date +%s%N)
  awk -v ns=$((end - start)) -v n="$n" 'BEGIN {printf "%.1f", ns / n / 1e6}'
}

echo "scale: making a 1 GiB random block in $work ..." >&2
head -c 1G /dev/urandom >"$work/block"
doc="$root/docs/PERFORMANCE.scaling.md"
{
  echo "## Scaling"
  echo
  echo "Measured by \`tools/scale.sh ${sizes[*]}\` on $(date -u +%Y-%m-%d), scratch files on $(df -T "$work" | awk 'NR==2 {print $2}') (one run each; the inputs repeat one 1 GiB block of random bytes, which neither tool deduplicates in a plain convert)."
  echo
  echo "| work | qemu-img | ours | ratio | qemu-img peak RSS | ours peak RSS |"
  echo "|---|---|---|---|---|---|"
  for size in "${sizes[@]}"; do
    rm -f "$work/in.raw"
    for ((i = 0; i < size; i++)); do cat "$work/block"; done >"$work/in.raw"
    read -r qt qm < <(measure qemu-img convert -O qcow2 "$work/in.raw" "$work/q.qcow2"); rm -f "$work/q.qcow2"
    read -r ot om < <(measure "${our[@]}" convert -O qcow2 "$work/in.raw" "$work/o.qcow2")
    [ "$size" = "${sizes[-1]}" ] && mv "$work/o.qcow2" "$work/large.qcow2" || rm -f "$work/o.qcow2"
    awk -v s="$size" -v qt="$qt" -v ot="$ot" -v qm="$qm" -v om="$om" 'BEGIN {printf "| convert raw→qcow2, %d GiB | %.2f s | %.2f s | %.2f× | %d MB | %d MB |\n", s, qt, ot, ot / qt, qm, om}'
  done
  rm -f "$work/in.raw"
  read -r _ qm < <(measure qemu-img check "$work/large.qcow2")
  read -r _ om < <(measure "${our[@]}" check "$work/large.qcow2")
  q="$(mean_ms 5 qemu-img check "$work/large.qcow2")"; o="$(mean_ms 5 "${our[@]}" check "$work/large.qcow2")"
  awk -v s="${sizes[-1]}" -v q="$q" -v o="$o" -v qm="$qm" -v om="$om" 'BEGIN {printf "| check, %d GiB allocated (mean of 5) | %.1f ms | %.1f ms | %.2f× | %d MB | %d MB |\n", s, q, o, o / q, qm, om}'
  rm -f "$work/large.qcow2"
  for virtual in 1G 1T; do
    "${our[@]}" create -f qcow2 "$work/sparse-$virtual.qcow2" "$virtual" >/dev/null
    for verb in info check; do
      read -r _ qm < <(measure qemu-img "$verb" "$work/sparse-$virtual.qcow2")
      read -r _ om < <(measure "${our[@]}" "$verb" "$work/sparse-$virtual.qcow2")
      q="$(mean_ms 20 qemu-img "$verb" "$work/sparse-$virtual.qcow2")"; o="$(mean_ms 20 "${our[@]}" "$verb" "$work/sparse-$virtual.qcow2")"
      awk -v v="$virtual" -v verb="$verb" -v q="$q" -v o="$o" -v qm="$qm" -v om="$om" 'BEGIN {printf "| %s of an empty %s image (mean of 20) | %.1f ms | %.1f ms | %.2f× | %d MB | %d MB |\n", verb, v, q, o, o / q, qm, om}'
    done
  done
} | tee "$doc.tmp"
mv "$doc.tmp" "$doc"
echo "scale: written to docs/PERFORMANCE.scaling.md" >&2
