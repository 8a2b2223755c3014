#!/usr/bin/env bash
# Benchmark of the clean-state step (issue: recovery runs). For each tree size it builds one tree
# of active tasks and three identical copies, then times on them, in the same run:
#   python    the runbook's own `clean_recovery`, extracted unchanged from the runbook and run
#             in a private mount namespace where the copy is bind-mounted at /shared (the
#             function hard-codes /shared and /tmp/<worker>);
#   operator  the operator's clean-state step (atomic writes, batched durability, journal);
#   bare      the same file operations in a plain loop with one sync at the end.
# It prints tasks per second and the ratios.
#
#   scripts/bench-clean-state.sh [SIZES...]      default: 20000 100000
#   RUNBOOK=path/to/seed-runbook.md              default: ../shared/seed-runbook.md
#
# Needs root (unshare, mount) and python3. Nothing outside a temporary directory is written,
# but for an empty /shared mount point created when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
RUNBOOK="${RUNBOOK:-${ROOT}/../shared/seed-runbook.md}"
SIZES=("${@:-20000 100000}")
read -r -a SIZES <<<"${SIZES[*]}"
WORKER=bench

[[ -r "${RUNBOOK}" ]] || { echo "runbook not found at ${RUNBOOK} (set RUNBOOK)" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || { echo "needs root for unshare/mount" >&2; exit 1; }

cargo build --release --locked --quiet --example clean_state_bench
BIN="${CARGO_TARGET_DIR:-${ROOT}/target}/release/examples/clean_state_bench"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wro-bench.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

# The runbook's clean_recovery, byte for byte: the python block that defines it.
python3 - "${RUNBOOK}" >"${WORK}/clean_recovery.py" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for block in re.findall(r"```python\n(.*?)```", text, re.S):
    if "def clean_recovery" in block:
        print(block)
        break
else:
    sys.exit("no clean_recovery in the runbook")
PY

make_tree() { # dir count
	python3 - "$1" "$2" "${WORKER}" <<'PY'
import json, os, sys
root, count, worker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tasks = os.path.join(root, "tasks", worker)
for d in ("pending", "active", "staged", "failed"):
    os.makedirs(os.path.join(tasks, d), exist_ok=True)
os.makedirs(os.path.join(root, "locks"), exist_ok=True)
os.makedirs(os.path.join(root, "workers", worker), exist_ok=True)
for i in range(count):
    task = {"id": f"t{i:06d}", "type": "summarize", "retry_count": i % 2,
            "payload": {"text": "lorem ipsum " * 8, "n": i, "tags": ["a", "b"]}}
    with open(os.path.join(tasks, "active", f"t{i:06d}.json"), "w") as f:
        json.dump(task, f)
for i in range(20):
    open(os.path.join(root, "locks", f"{worker}_t{i:06d}.lock"), "w").close()
PY
}

settle() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	sleep 2
}

run_python() { # tree -> seconds
	mkdir -p "${WORK}/python-tmp/${WORKER}"
	CODE="$(cat "${WORK}/clean_recovery.py")" unshare --mount --propagation private bash -c '
		mkdir -p /shared && mount --bind "$1" /shared && mount --bind "$2" /tmp
		python3 -c "
import os, sys, time
exec(os.environ[\"CODE\"])
t = time.perf_counter()
clean_recovery(sys.argv[1])
print(f\"{time.perf_counter() - t:.3f}\", file=sys.stderr)
" "$3" >/dev/null' _ "$1" "${WORK}/python-tmp" "${WORKER}" 2>&1 | tail -n 1
}

run_rust() { # impl tree -> seconds (and checks the count)
	local out n secs
	out="$("${BIN}" "$1" "$2" "${WORKER}" 2>/dev/null)"
	read -r _ n secs _ <<<"${out}"
	[[ "${n}" == "${SIZE}" ]] || { echo "$1 moved ${n} of ${SIZE} tasks" >&2; exit 1; }
	echo "${secs}"
}

# Each size: REPEATS rounds on fresh copies of one tree, the order of the three rotating from
# round to round, and the median of each (the disk of a VM is noisy).
REPEATS="${REPEATS:-3}"
printf '%-8s %-9s %-28s %10s\n' size impl "seconds (rounds)" "tasks/s"
for SIZE in "${SIZES[@]}"; do
	make_tree "${WORK}/seed" "${SIZE}"
	declare -A secs=([python]="" [operator]="" [bare]="")
	order=(python operator bare)
	for ((round = 0; round < REPEATS; round++)); do
		for impl in "${order[@]}"; do
			rm -rf "${WORK}/${impl}"
			cp -a "${WORK}/seed" "${WORK}/${impl}"
		done
		for impl in "${order[@]}"; do
			# Each timed run starts alike: nothing dirty, caches dropped, the journal settled.
			settle
			case "${impl}" in
			python) t="$(run_python "${WORK}/python")" ;;
			*) t="$(run_rust "${impl}" "${WORK}/${impl}")" ;;
			esac
			secs[${impl}]+="${t} "
		done
		order=("${order[@]:1}" "${order[0]}")
	done
	python3 - "${SIZE}" "${secs[python]}" "${secs[operator]}" "${secs[bare]}" <<'PY'
import statistics, sys
size = int(sys.argv[1])
rates = {}
for impl, raw in zip(("python", "operator", "bare"), sys.argv[2:]):
    times = [float(t) for t in raw.split()]
    med = statistics.median(times)
    rates[impl] = size / med
    print(f"{size:<8} {impl:<9} {med:>7.3f} ({' '.join(f'{t:.2f}' for t in times)}){'':<4} {rates[impl]:>10.0f}")
print(f"{size:<8} operator/python {rates['operator'] / rates['python']:.2f}x   "
      f"operator/bare {rates['operator'] / rates['bare']:.2f}")
PY
	rm -rf "${WORK}/seed" "${WORK}/python" "${WORK}/operator" "${WORK}/bare" "${WORK}/python-tmp"
done
