#!/usr/bin/env bash
# Long-run driver for the hostile-image fuzzer (Qcow2.Tests/Fuzzing). Runs the same campaign as
# the CI test Mutated_images_fail_only_with_documented_exceptions, for as many cases as asked,
# and prints the same counts: cases, undocumented exceptions by type, hangs, over-cap
# allocations, qemu-io twin oracle checks and disagreements.
#
#   QCOWDEDUP_FUZZ_CASES=200000 QCOWDEDUP_FUZZ_SEED=7 tools/fuzz.sh
#
# Environment:
#   QCOWDEDUP_FUZZ_CASES         cases to run (default 20000, as in CI)
#   QCOWDEDUP_FUZZ_SEED          campaign seed (default 1, as in CI); case i uses seed*1000003+i
#   QCOWDEDUP_FUZZ_ORACLE_EVERY  replay every Nth case with qemu-io on a twin (default 500; 0 = off)
#   QCOWDEDUP_FUZZ_CRASHERS      directory for crashers (default ./fuzz-crashers); each is an image
#                                (.qcow2 or .qcow2.gz), a .length when the file claims a sparse length,
#                                and a .txt with the mutations and the exception. Copy small ones into
#                                testdata/fuzz/ and Fuzz_fixture_replays_clean runs them.
#   QCOWDEDUP_FUZZ_SEED_CACHE    where seed images are built once (default $TMPDIR/qcowdedup-fuzz-seeds-v1)
set -euo pipefail
cd "$(dirname "$0")/.."
export QCOWDEDUP_FUZZ_CASES="${QCOWDEDUP_FUZZ_CASES:-20000}"
export QCOWDEDUP_FUZZ_SEED="${QCOWDEDUP_FUZZ_SEED:-1}"
export QCOWDEDUP_FUZZ_CRASHERS="${QCOWDEDUP_FUZZ_CRASHERS:-$PWD/fuzz-crashers}"
dotnet build Qcow2.Tests -c Release -nologo -v quiet
dotnet test Qcow2.Tests -c Release --no-build -nologo \
  --filter "FullyQualifiedName~Fuzzing.FuzzTests.Mutated_images_fail_only_with_documented_exceptions" \
  --logger "console;verbosity=normal"
