# Sourced by tools/bench.sh and tools/scale.sh: checks the oracle and GNU time, builds the tool,
# and sets $ours to the command that runs it (the native build, run directly so that the
# wrapper's staleness check is not timed; the portable build where the native link failed).
# Needs $root and $name (the script's name for its messages).
command -v qemu-img >/dev/null || { echo "$name: qemu-img is needed (apt-get install qemu-utils)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "$name: GNU time (/usr/bin/time) is needed (apt-get install time)" >&2; exit 1; }
"$root/tools/qcow2" --version >/dev/null
ours="$(ls "$root"/tools/.build/native-*/qcow2 2>/dev/null | head -n 1)"
[ -n "$ours" ] || ours="dotnet $root/tools/.build/cli/qcow2.dll"
