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

printf '%-8s %-9s %9s %10s\n' size impl seconds tasks/s
for n in "${SIZES[@]}"; do
	make_tree "${WORK}/seed" "${n}"
	for impl in python operator bare; do
		rm -rf "${WORK}/${impl}"
		cp -a "${WORK}/seed" "${WORK}/${impl}"
	done
	sync
	# python: /shared and /tmp replaced by the copy inside a private mount namespace.
	mkdir -p "${WORK}/python-tmp/${WORKER}"
	py_secs="$(CODE="$(cat "${WORK}/clean_recovery.py")" unshare --mount --propagation private bash -c '
		mkdir -p /shared && mount --bind "$1" /shared && mount --bind "$2" /tmp
		python3 -c "
import os, sys, time
exec(os.environ[\"CODE\"])
t = time.perf_counter()
clean_recovery(sys.argv[1])
print(f\"{time.perf_counter() - t:.3f}\", file=sys.stderr)
" "$3" >/dev/null' _ "${WORK}/python" "${WORK}/python-tmp" "${WORKER}" 2>&1 | tail -n 1)"
	py_rate="$(python3 -c "print(round(${n} / ${py_secs}))")"
	printf '%-8s %-9s %9s %10s\n' "${n}" python "${py_secs}" "${py_rate}"
	read -r _ op_n op_secs op_rate < <("${BIN}" operator "${WORK}/operator" "${WORKER}")
	printf '%-8s %-9s %9s %10s\n' "${n}" operator "${op_secs}" "${op_rate}"
	read -r _ bare_n bare_secs bare_rate < <("${BIN}" bare "${WORK}/bare" "${WORKER}")
	printf '%-8s %-9s %9s %10s\n' "${n}" bare "${bare_secs}" "${bare_rate}"
	[[ "${op_n}" == "${n}" && "${bare_n}" == "${n}" ]] || { echo "task counts differ: ${op_n} ${bare_n} ${n}" >&2; exit 1; }
	python3 -c "print(f'{${n}:<8} operator/python {${op_rate}/${py_rate}:.2f}x   operator/bare {${op_rate}/${bare_rate}:.2f}')"
	rm -rf "${WORK}/seed" "${WORK}/python" "${WORK}/operator" "${WORK}/bare" "${WORK}/python-tmp"
done
