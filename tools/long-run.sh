#!/usr/bin/env bash
# The long runs behind the CI samples of issue 9: the same tests with every crash point, many more
# stress operations and fuzz cases. Hours, not minutes. Prints each test's counts (crash points,
# leaks, dirty-bit repairs, I/O errors, stress statistics, fuzz tallies) and ends, as tools/test.sh
# does, with "N passed, N failed, N skipped".
#
#   tools/long-run.sh [crash|errors|stress|fuzz|all] [dotnet test arguments...]
#
# Defaults (override through the environment):
#   QCOWDEDUP_CRASH_POINTS=all     fault points per workload, mode and API ("all" or a number, CI: 24)
#   QCOWDEDUP_STRESS_OPS=1000000   operations per stress run (CI: 100000)
#   QCOWDEDUP_FUZZ_CASES=1000000   fuzz cases (CI: 20000); QCOWDEDUP_FUZZ_SEED picks another sequence
# Example: only the synchronous crash runs, 2000 sampled points each:
#   QCOWDEDUP_CRASH_POINTS=2000 tools/long-run.sh crash --filter "FullyQualifiedName~CrashEnumeration&Name~False"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
what="${1:-all}"
[ $# -gt 0 ] && shift
case "$what" in
  crash) filter="FullyQualifiedName~Faults.CrashEnumerationTests" ;;
  errors) filter="FullyQualifiedName~Faults.IoErrorTests" ;;
  stress) filter="FullyQualifiedName~Concurrency.ConcurrencyStressTests" ;;
  fuzz) filter="FullyQualifiedName~Fuzzing" ;;
  all) filter="FullyQualifiedName~Faults|FullyQualifiedName~Concurrency.ConcurrencyStressTests|FullyQualifiedName~Fuzzing" ;;
  -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "long-run.sh: unknown run '$what' (crash, errors, stress, fuzz or all)" >&2; exit 2 ;;
esac

export QCOWDEDUP_CRASH_POINTS="${QCOWDEDUP_CRASH_POINTS:-all}"
export QCOWDEDUP_STRESS_OPS="${QCOWDEDUP_STRESS_OPS:-1000000}"
export QCOWDEDUP_FUZZ_CASES="${QCOWDEDUP_FUZZ_CASES:-1000000}"
export QCOWDEDUP_TEST_VERBOSITY=normal
echo "long run '$what': crash points ${QCOWDEDUP_CRASH_POINTS}, stress ops ${QCOWDEDUP_STRESS_OPS}, fuzz cases ${QCOWDEDUP_FUZZ_CASES}"
has_filter=false
for arg in "$@"; do [ "$arg" = "--filter" ] && has_filter=true; done
if $has_filter; then
  exec "$root/tools/test.sh" "$@"
fi
exec "$root/tools/test.sh" --filter "$filter" "$@"
