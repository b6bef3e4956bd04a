#!/usr/bin/env bash
# Side-by-side benchmark against qemu-img (issue 11): every row of the performance table, on the
# same files in one run, alternating qemu-img and ours, medians of ROUNDS runs, whole processes.
# Writes the table to docs/PERFORMANCE.md (with the machine and the command) and prints it.
#
#   tools/bench.sh [ROUNDS]        default 3; BENCH_DIR picks the scratch directory (default: a
#                                  tmpfs, /dev/shm, as the table's numbers assume)
#
# "ours" is the native build tools/qcow2 makes (run directly, so the wrapper's staleness check is
# not timed); GNU time reports peak RSS.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${1:-3}"
work="${BENCH_DIR:-/dev/shm}/qcowdedup-bench-$$"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

name=bench
# shellcheck source=tools/bench-common.sh
. "$root/tools/bench-common.sh"

echo "bench: making the 1 GiB inputs in $work ..." >&2
head -c 1G /dev/urandom >"$work/random.raw"
# mixed: per 10 clusters of 64 KiB, 3 of zeros, 3 of text, 4 of random bytes
head -c 196608 /dev/zero >"$work/z3"
set +o pipefail # yes and the loop end on SIGPIPE once head has enough
yes "QcowDedup benchmark text: the quick brown fox jumps over the lazy dog 0123456789" | head -c 196608 >"$work/t3"
for ((i = 0; i < 1639; i++)); do cat "$work/z3" "$work/t3"; head -c 262144 /dev/urandom; done | head -c 1G >"$work/mixed.raw"
set -o pipefail
# half the clusters repeat: 512 MiB of random clusters, twice
head -c 512M /dev/urandom >"$work/half"
cat "$work/half" "$work/half" >"$work/dup.raw"
rm -f "$work/half" "$work/z3" "$work/t3"
qemu-img convert -O qcow2 "$work/random.raw" "$work/alloc.qcow2"

# warm: writes and deletes 2 GiB on the scratch file system just before each timed run, so that
# the run's page allocations find recently used free memory whichever tool runs and whatever ran
# before. Without it, memory given back to the host after an earlier large file was deleted
# (this VM's balloon/free page reporting) costs a host fault on first touch, and the same run of
# either tool varied 0.3-2.5 s, so that a row's median depended on what ran before it.
warm() {
  head -c 2G /dev/zero >"$work/.warm"
  rm -f "$work/.warm"
}
# timed KEY CMD...: runs CMD under GNU time; appends "seconds rss_kib" to $work/KEY
timed() {
  local key="$1"; shift
  sync
  [ -w /proc/sys/vm/drop_caches ] && echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
  warm
  /usr/bin/time -f "%e %M" -o "$work/.t" "$@" >/dev/null
  cat "$work/.t" >>"$work/$key"
}
# bench_rate KEY CMD...: a fresh 1 GiB image, then CMD IMG; appends the "Run completed" seconds
bench_rate() {
  local key="$1"; shift
  rm -f "$work/b.qcow2"; qemu-img create -q -f qcow2 "$work/b.qcow2" 1G
  warm
  "$@" "$work/b.qcow2" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1 0/p' >>"$work/$key"
}
# many KEY N CMD...: N back-to-back runs; appends the mean milliseconds per run
many() {
  local key="$1" n="$2"; shift 2
  local start end
  start=$(date +%s%N)
  for ((j = 0; j < n; j++)); do "$@" >/dev/null; done
  end=$(date +%s%N)
  awk -v ns=$((end - start)) -v n="$n" 'BEGIN {printf "%.2f 0\n", ns / n / 1e6}' >>"$work/$key"
}

for ((r = 1; r <= rounds; r++)); do
  echo "bench: round $r of $rounds" >&2
  for side in qemu ours; do
    if [ $side = qemu ]; then img=(qemu-img); else read -r -a img <<<"$ours"; fi
    out="$work/out.$side"
    timed "raw2q.$side" "${img[@]}" convert -O qcow2 "$work/random.raw" "$out.qcow2"; rm -f "$out.qcow2"
    timed "q2raw.$side" "${img[@]}" convert -f qcow2 -O raw "$work/alloc.qcow2" "$out.raw"; rm -f "$out.raw"
    timed "zlib.$side" "${img[@]}" convert -c -O qcow2 "$work/mixed.raw" "$out.z.qcow2"
    stat -c %s "$out.z.qcow2" >"$work/zlibsize.$side"; rm -f "$out.z.qcow2"
    timed "zstd.$side" "${img[@]}" convert -c -O qcow2 -o compression_type=zstd "$work/mixed.raw" "$out.s.qcow2"
    stat -c %s "$out.s.qcow2" >"$work/zstdsize.$side"; rm -f "$out.s.qcow2"
    if [ $side = qemu ]; then
      timed "dedup.$side" "${img[@]}" convert -O qcow2 "$work/dup.raw" "$out.d.qcow2"
    else
      timed "dedup.$side" "${img[@]}" convert -O qcow2 -o dedup=on "$work/dup.raw" "$out.d.qcow2"
    fi
    rm -f "$out.d.qcow2"
    bench_rate "seq.$side" "${img[@]}" bench -w --pattern=165 -s 65536 -d 1 -c 16384
    bench_rate "stride.$side" "${img[@]}" bench -w --pattern=165 -s 4096 -S 1048576 -d 1 -c 50000
    many "info.$side" 20 "${img[@]}" info "$work/alloc.qcow2"
    many "check.$side" 20 "${img[@]}" check "$work/alloc.qcow2"
  done
done

median() { sort -n -k1,1 "$1" | awk '{a[NR]=$1; m[NR]=$2} END {i=int((NR+1)/2); print a[i], m[i]}'; }
row() { # title key kind goal: kind "time" (ratio ours/qemu) or "rate:UNITS:AMOUNT" (ours faster by)
  local title="$1" key="$2" kind="$3" goal="$4" q o qr or
  read -r q qr < <(median "$work/$key.qemu")
  read -r o or < <(median "$work/$key.ours")
  case "$kind" in
    time) awk -v t="$title" -v q="$q" -v o="$o" -v rss="$or" -v g="$goal" 'BEGIN {printf "| %s | %.2f s | %.2f s | %.2f× | %s | %.0f MB |\n", t, q, o, o / q, g, rss / 1024}' ;;
    ms) awk -v t="$title" -v q="$q" -v o="$o" -v g="$goal" 'BEGIN {printf "| %s | %.1f ms | %.1f ms | %.2f× | %s | |\n", t, q, o, o / q, g}' ;;
    rate:*) IFS=: read -r _ units amount <<<"$kind"
      awk -v t="$title" -v q="$q" -v o="$o" -v u="$units" -v a="$amount" -v g="$goal" 'BEGIN {printf "| %s | %.0f %s | %.0f %s | %.2f× faster | %s | |\n", t, a / q, u, a / o, u, q / o, g}' ;;
  esac
}
size_note() { awk -v q="$(cat "$work/$1.qemu")" -v o="$(cat "$work/$1.ours")" 'BEGIN {printf "file %+.1f%%", (o - q) * 100 / q}'; }

table="$work/table.md"
{
  echo "| work | qemu-img | ours | ratio ours/qemu | goal | ours peak RSS |"
  echo "|---|---|---|---|---|---|"
  row "convert raw→qcow2, random data" raw2q time "≤ 1.0×"
  row "convert qcow2→raw" q2raw time "≤ 0.9×"
  row "convert -c zlib, mixed ($(size_note zlibsize))" zlib time "≤ 0.6×, file ≤ +1%"
  row "convert -c zstd, mixed ($(size_note zstdsize))" zstd time "≤ 0.6×"
  row "convert, half the clusters repeat: ours -o dedup=on vs plain qemu-img" dedup time "≤ 1.0×"
  row "sequential 64 KiB writes, fresh image (\`bench -w -s 65536 -d 1\`)" seq "rate:MiB/s:1024" "≥ 1.3× faster"
  row "4 KiB writes at a 1 MiB stride (\`bench -w -s 4096 -S 1048576 -d 1 -c 50000\`)" stride "rate:writes/s:50000" "≥ 2× faster"
  row "\`info\` start-up (mean of 20)" info ms "≤ 2×"
  row "\`check\`, 1 GiB allocated (mean of 20)" check ms "≤ 2×"
} >"$table"

doc="$root/docs/PERFORMANCE.md"
{
  echo "# Performance"
  echo
  echo "Measured by \`tools/bench.sh $rounds\` on $(date -u +%Y-%m-%d): $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, Linux $(uname -r), $(qemu-img --version | head -n 1), scratch files on $(df -T "$work" | awk 'NR==2 {print $2}'). 1 GiB inputs; whole processes; qemu-img and ours alternate; medians of $rounds runs; ours is the native (AOT) build."
  echo
  cat "$table"
  echo
  echo "Inputs: random = 1 GiB from /dev/urandom; mixed = per 10 clusters of 64 KiB, 3 of zeros, 3 of text, 4 random; half repeat = 512 MiB of random clusters written twice. The bench rows use a non-zero pattern (\`--pattern=165\`) so that neither tool can skip the data as zeros."
  [ -f "$root/docs/PERFORMANCE.scaling.md" ] && { echo; cat "$root/docs/PERFORMANCE.scaling.md"; }
  [ -f "$root/docs/PERFORMANCE.notes.md" ] && { echo; cat "$root/docs/PERFORMANCE.notes.md"; }
} >"$doc"
cat "$table"
echo "bench: written to docs/PERFORMANCE.md" >&2
