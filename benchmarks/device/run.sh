#!/usr/bin/env bash
# GPU readiness in one prepared script, for one H100/H200 machine that has torch and lightning but no network:
# it installs what that machine lacks from wheels carried beside this script, then measures, each step with
# its own time limit and the whole run within TOTAL_S (9 minutes):
#   - sampling: time and peak memory for one volume of each preset, 48x240x360 (lung) and 48x512x512 (full),
#     at fp32 (the `ctsynth generate` default) and bf16-mixed (benchmarks/device/sample_memory.py; the goal
#     for 48x512x512 is <= 1 s and <= 8 GB),
#   - training: steps/s and peak memory per stage of the lung and full presets (benchmarks/bench_train.py,
#     which also prints the fp32 sampling time of the briefly trained run),
#   - quality: benchmarks/bench_quality.py with a GPU budget (what is left of TOTAL_S).
#
#   bash benchmarks/device/run.sh --fetch-wheels [--with-numeric]   # here, with PyPI: fill benchmarks/device/wheels/
#   bash benchmarks/device/run.sh                                   # on the GPU machine (carry benchmarks/device/wheels)
#   bash benchmarks/device/run.sh --dry-run                         # on a CPU: the same steps, tiny preset (tests)
#
# Everything printed goes to stdout and to OUT_DIR/device-run.log (OUT_DIR = $OUT if set, else
# benchmarks/device/out), with OUT_DIR/quality-results.tar.gz (the quality benchmark's small text files).
# Scratch (phantom cohort, caches, runs) goes to WORK_DIR (default: a temporary folder, removed at the end
# unless KEEP_WORK=1). Exit status: 0 when every step that ran passed, 1 otherwise, 2 for bad usage.
# Every variable below can be set in the environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODE=gpu
WITH_NUMERIC=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) MODE=dry ;;
        --fetch-wheels) MODE=fetch ;;
        --with-numeric) WITH_NUMERIC=1 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "run.sh: unknown argument '$arg' (use --dry-run, --fetch-wheels [--with-numeric] or nothing)" >&2; exit 2 ;;
    esac
done

# ---- budgets (seconds) and sizes: GPU run | dry run (CPU) ----
if [[ $MODE == dry ]]; then
    : "${TOTAL_S:=560}" "${T_SETUP:=90}" "${T_PREP:=90}" "${T_SAMPLE:=150}" "${T_TRAIN:=180}" "${T_QUALITY_MIN:=60}"
    : "${CONFIGS:=tiny}" "${CASES:=4}" "${STEPS:=8}" "${WARMUP:=2}"
    # the GPU presets' stage 1 (autoencoder.kind, haar_levels) replaces tiny's, so that the dry run takes the
    # code path of the GPU run (tiny keeps kl for the training tests; lung and full use the Haar transform)
    : "${DRY_STAGE1_FROM=lung}"   # empty: tiny as it is
else
    : "${TOTAL_S:=540}"          # 9 minutes in all
    : "${T_SETUP:=60}"           # install the missing wheels, check the imports
    : "${T_PREP:=100}"           # phantom cohort (CASES studies at 512 px, ~10 s each on one core), lung + full caches
    : "${T_SAMPLE:=100}"         # sampling, lung + full, fp32 + bf16-mixed, incl. a 1-step training run of each
    : "${T_TRAIN:=90}"           # bench_train per config (3 processes: stage 1, stage 2, sampling)
    : "${T_TRAIN_FULL:=100}"
    : "${T_QUALITY_MIN:=90}"     # the quality benchmark gets what is left of TOTAL_S, at least this (else skipped)
    : "${CONFIGS:=lung full}" "${CASES:=4}" "${STEPS:=30}" "${WARMUP:=5}"
fi
# bench_quality on the GPU: a small cohort (its default, 200 phantoms at 256 px, takes ~8 minutes to make alone)
: "${QUALITY_N:=16}"             # --n: phantom cases (~2.5 s each at 256 px on one core)
: "${QUALITY_SAMPLES:=8}"        # --samples: synthetic volumes per class
: "${QUALITY_OVERHEAD_S:=150}"   # its time beyond --budget-min (cohort, prepare, sampling, evaluation, curve)
: "${QUALITY_BUDGET_MIN:=}"      # set to fix --budget-min; else (time left - QUALITY_OVERHEAD_S) / 60, >= 0.5
: "${QUALITY_EXTRA:=}"           # more bench_quality flags, e.g. "--config quality --size 32x96x144"
: "${PRECISIONS:=32,bf16-mixed}" # sampling precisions
: "${KILL_GRACE_S:=5}"           # after a step's limit: SIGTERM (training checkpoints and stops), then SIGKILL

: "${WHEEL_DIR:=benchmarks/device/wheels}"
: "${WHEEL_PYTHONS:=3.10 3.11 3.12}"
# What a machine with only torch + lightning lacks (import name:distribution). numpy, packaging and
# typing_extensions come with torch/lightning; importlib_resources is needed by nibabel below Python 3.12,
# cloudpickle by joblib.
CORE_PACKAGES="monai:monai pydicom:pydicom nibabel:nibabel pylibjpeg:pylibjpeg openjpeg:pylibjpeg-openjpeg
libjpeg:pylibjpeg-libjpeg prdc:prdc tifffile:tifffile einops:einops safetensors:safetensors yaml:pyyaml tqdm:tqdm
joblib:joblib cloudpickle:cloudpickle threadpoolctl:threadpoolctl importlib_resources:importlib_resources"
# Large (about 47 MB a Python version: over the 64 MiB a device call carries for three); the H200 image has them:
# fetched only with --with-numeric, installed from the folder if there and missing on the machine.
NUMERIC_PACKAGES="numpy:numpy scipy:scipy sklearn:scikit-learn narwhals:narwhals"  # narwhals: scikit-learn >= 1.8
PLATFORMS="manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux_2_12_x86_64
manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_26_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64"

if [[ -z ${PYTHON:-} ]]; then
    if [[ $MODE != gpu && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PY=$(command -v "$PYTHON" || true)
if [[ -z $PY ]]; then echo "run.sh: no Python '$PYTHON' (set PYTHON)" >&2; exit 2; fi
[[ $PY == /* ]] || PY=$PWD/$PY
export PYTHONUNBUFFERED=1

label_of() { local b=${1##*/}; echo "${b%.yaml}"; }  # a preset name or a YAML path -> file-name label
platform_args() { local p; for p in $PLATFORMS; do printf -- '--platform\n%s\n' "$p"; done; }
dists_of() { local pair; for pair in $1; do printf '%s ' "${pair#*:}"; done; }

# ---- --fetch-wheels: here, with PyPI, pinned to the versions of the local .venv ----
fetch_wheels() {
    mkdir -p "$WHEEL_DIR"
    local packages=$CORE_PACKAGES dist pin pyv spec failed=0
    (( WITH_NUMERIC )) && packages="$packages $NUMERIC_PACKAGES"
    local -a plats; mapfile -t plats < <(platform_args)
    echo "fetching wheels into $WHEEL_DIR for CPython $WHEEL_PYTHONS (pins from $PY)"
    for dist in $(dists_of "$packages"); do
        pin=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$dist" 2>/dev/null || true)
        for pyv in $WHEEL_PYTHONS; do
            spec=$dist${pin:+==$pin}
            if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
                    --implementation cp --python-version "$pyv" "${plats[@]}" --dest "$WHEEL_DIR" "$spec"; then
                if [[ -n $pin ]] && "$PY" -m pip download -q --disable-pip-version-check --no-deps \
                        --only-binary=:all: --implementation cp --python-version "$pyv" "${plats[@]}" \
                        --dest "$WHEEL_DIR" "$dist"; then
                    echo "  $dist==$pin has no wheel for CPython $pyv: fetched the newest that has one"
                else
                    echo "  FAILED: $dist for CPython $pyv"; failed=1
                fi
            fi
        done
    done
    ls -1 "$WHEEL_DIR"
    echo "wheels: $(ls -1 "$WHEEL_DIR"/*.whl | wc -l) files, $(du -sh "$WHEEL_DIR" | cut -f1) in $WHEEL_DIR"
    if (( $(du -sm "$WHEEL_DIR" | cut -f1) > 48 )); then
        echo "note: over 48 MB; the device tool carries 64 MiB a call, the repo included (fetch fewer WHEEL_PYTHONS)"
    fi
    echo "carry it to the GPU machine with the repo (device tool: carry [\"$WHEEL_DIR\"]), then: bash benchmarks/device/run.sh"
    return $failed
}

if [[ $MODE == fetch ]]; then
    fetch_wheels
    exit $?
fi

# ---- the measurement run (GPU, or --dry-run on a CPU) ----
OUT_DIR=${OUT:-benchmarks/device/out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/device-run.log
: >"$LOG"
if [[ -z ${WORK_DIR:-} ]]; then
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ctsynth-device.XXXXXX")
    [[ ${KEEP_WORK:-0} == 1 ]] || trap 'rm -rf "$WORK_DIR"' EXIT
else
    mkdir -p "$WORK_DIR"
    if [[ -n $(ls -A "$WORK_DIR") ]]; then echo "run.sh: WORK_DIR $WORK_DIR is not empty" >&2; exit 2; fi
fi
WORK_DIR=$(cd "$WORK_DIR" && pwd)

declare -a SUMMARY=()
FAILED=0

# run_step NAME LIMIT_S CMD...: run CMD under `timeout`, never past the deadline; its output also goes to
# WORK_DIR/steps/NAME.log; the result (ok / FAILED / TIMED OUT / SKIPPED, seconds) goes to the summary.
run_step() {
    local name=$1 limit=$2; shift 2
    local left=$(( TOTAL_S - SECONDS - KILL_GRACE_S ))
    if (( left < 10 )); then
        echo "== $name: SKIPPED (${SECONDS} s of the ${TOTAL_S} s used)"
        SUMMARY+=("$name: SKIPPED, out of time"); return 0
    fi
    (( limit > left )) && limit=$left
    echo; echo "== $name (limit ${limit} s, at ${SECONDS} s): $*"
    mkdir -p "$WORK_DIR/steps"
    local t0=$SECONDS rc=0
    timeout -k "$KILL_GRACE_S" "$limit" "$@" 2>&1 | tee "$WORK_DIR/steps/$name.log" || rc=$?
    local took=$(( SECONDS - t0 )) status=ok
    if (( rc == 124 || rc == 137 )); then status="TIMED OUT"; elif (( rc != 0 )); then status="FAILED (exit $rc)"; fi
    (( rc == 0 )) || FAILED=1
    echo "== $name: $status in $took s"
    SUMMARY+=("$name: $status in $took s")
    return $rc
}

print_summary() {
    echo; echo "== summary (${SECONDS} s of ${TOTAL_S} s, mode $MODE)"
    printf '%s\n' "${SUMMARY[@]}"
    cat "$WORK_DIR"/steps/*.log 2>/dev/null |
        grep -E '^(config |stage [12] |sampling|goal |ratio |quality benchmark: |times: )' || true
}

header() {
    echo "ctsynth device run, mode $MODE, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(hostname 2>/dev/null || echo '?')"
    echo "repo $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)'), out $OUT_DIR, work $WORK_DIR, python $PY"
    echo "budgets (s): total $TOTAL_S, setup $T_SETUP, prep $T_PREP, sampling $T_SAMPLE, train $T_TRAIN" \
         "${T_TRAIN_FULL:+(full $T_TRAIN_FULL)}, quality the rest (>= $T_QUALITY_MIN); configs '$CONFIGS'," \
         "$CASES phantom studies, $STEPS steps per stage ($WARMUP warm-up), sampling precisions $PRECISIONS"
    echo "cpus $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?'), memory $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GB"}')"
    if command -v nvidia-smi >/dev/null; then nvidia-smi || true; else echo "nvidia-smi: not found"; fi
    "$PY" - <<'EOF' || true
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, CUDA available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, devices {torch.cuda.device_count()}")
try:
    import lightning
    print(f"lightning {lightning.__version__}")
except ImportError as exc:
    print(f"lightning: not importable ({exc})")
EOF
}

# The distributions (of PACKAGES) this Python cannot import.
missing_dists() {
    "$PY" - $CORE_PACKAGES $NUMERIC_PACKAGES <<'EOF'
import importlib.util, sys
for pair in sys.argv[1:]:
    module, dist = pair.split(":")
    if module == "importlib_resources" and sys.version_info >= (3, 12):
        continue  # nibabel needs it only below 3.12
    if importlib.util.find_spec(module) is None:
        print(dist)
EOF
}

# Check that the wheel folder installs, offline, on each Python it was fetched for (dry run: nothing installed).
check_wheels() {
    if [[ ! -d $WHEEL_DIR ]]; then echo "no $WHEEL_DIR here (fetch it with --fetch-wheels): not checked"; return 0; fi
    local -a plats; mapfile -t plats < <(platform_args)
    local pyv dists
    for pyv in $WHEEL_PYTHONS; do
        dists=$(dists_of "$CORE_PACKAGES")
        if [[ $pyv == 3.1[2-9] ]]; then dists=${dists/importlib_resources/}; fi
        "$PY" -m pip install -q --disable-pip-version-check --dry-run --no-index --find-links "$WHEEL_DIR" \
            --no-deps --only-binary=:all: --implementation cp --python-version "$pyv" "${plats[@]}" \
            --target "$WORK_DIR/wheel-check" $dists
        echo "$WHEEL_DIR installs offline on CPython $pyv: $dists"
    done
    echo "$WHEEL_DIR: $(du -sh "$WHEEL_DIR" | cut -f1)"
}

setup() {
    local missing
    missing=$(missing_dists | tr '\n' ' ')
    if [[ -z ${missing// /} ]]; then
        echo "every package is importable: nothing to install"
    elif [[ $MODE == dry ]]; then
        echo "dry run: would install from $WHEEL_DIR: $missing"
    else
        if [[ ! -d $WHEEL_DIR ]]; then
            echo "missing $missing and no $WHEEL_DIR: run 'bash benchmarks/device/run.sh --fetch-wheels' where PyPI is" \
                 "reachable and carry that folder"; return 1
        fi
        echo "installing from $WHEEL_DIR into $WORK_DIR/site: $missing"
        # --no-deps and names only: torch, lightning and whatever else is there are never replaced
        "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEEL_DIR" --no-deps \
            --no-compile --target "$WORK_DIR/site" $missing
    fi
    if [[ $MODE == dry ]]; then check_wheels; fi
    "$PY" - <<'EOF'
import importlib.metadata as m
import ctsynth, monai, nibabel, prdc, pydicom, pylibjpeg, scipy, sklearn, tifffile, torch  # noqa: F401
import libjpeg, openjpeg  # noqa: F401  (pylibjpeg's decoders)
from ctsynth.generate import Generator  # noqa: F401
from ctsynth.train import train  # noqa: F401
names = ["monai", "pydicom", "nibabel", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "prdc", "numpy",
         "scipy", "scikit-learn", "tifffile", "safetensors", "einops", "pyyaml", "tqdm", "torch", "lightning"]
print("imports ok from", ctsynth.__file__)
print(", ".join(f"{n} {m.version(n)}" for n in names))
EOF
}

# The lung/full (or tiny) caches, from one phantom cohort per image size (the size rule of bench_train.make_prep).
prepare_caches() {
    "$PY" - "$WORK_DIR" "$CASES" $CONFIGS <<'EOF'
import sys, time
from pathlib import Path
from ctsynth.config import load_config
from ctsynth.phantom import make_phantom_cohort
from ctsynth.preprocess.prepare import prepare_cache

work, cases, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
made = set()
for name in names:
    config = load_config(name)
    size = max(64, min(512, 2 * max(config.data.shape[1:])))  # as benchmarks/bench_train.py's make_prep
    data = work / f"phantom-{size}"
    if size not in made:
        t0 = time.perf_counter()
        make_phantom_cohort(data, cases, size=size, seed=0)
        made.add(size)
        print(f"phantom cohort: {cases} studies at {size} px in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    label = Path(name).stem if name.endswith(".yaml") else name
    prepare_cache(data, config, work / f"prep-{label}", progress=False)
    print(f"cache prep-{label} ({'x'.join(map(str, config.data.shape))}) in {time.perf_counter() - t0:.1f} s", flush=True)
EOF
}

# Dry run: CONFIG itself if its stage 1 is that of the GPU presets (DRY_STAGE1_FROM), else a copy of it with
# that stage 1 (autoencoder.kind, haar_levels) written to WORK_DIR; prints the name or path to use.
with_gpu_stage1() {
    "$PY" - "$1" "$DRY_STAGE1_FROM" "$WORK_DIR" <<'EOF'
import sys
from pathlib import Path
import yaml
from ctsynth.config import PRESET_DIR, load_config
name, gpu, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
small, big = load_config(name), load_config(gpu)
if (small.autoencoder.kind, small.autoencoder.haar_levels) == (big.autoencoder.kind, big.autoencoder.haar_levels):
    print(name)
else:
    path = Path(name) if Path(name).suffix else PRESET_DIR / f"{name}.yaml"
    values = yaml.safe_load(path.read_text()) or {}
    values.setdefault("autoencoder", {}).update(kind=big.autoencoder.kind, haar_levels=big.autoencoder.haar_levels)
    values["name"] = f"{small.name}-gpu"
    out = work / f"{small.name}-gpu.yaml"
    out.write_text(f"# {small.name} with the stage 1 of {gpu} (written by benchmarks/device/run.sh --dry-run)\n"
                   + yaml.safe_dump(values, sort_keys=False))
    print(out)
    print(f"dry run: {out.name} is {small.name} with the stage 1 of {gpu}: autoencoder.kind {big.autoencoder.kind}, "
          f"haar_levels {big.autoencoder.haar_levels}", file=sys.stderr)
EOF
}

main() {
    header
    export PYTHONPATH="$PWD/src:$WORK_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
    # a `ctsynth` command for anything that calls it, running this checkout
    mkdir -p "$WORK_DIR/bin"
    printf '#!/bin/sh\nexec "%s" -m ctsynth "$@"\n' "$PY" >"$WORK_DIR/bin/ctsynth"
    chmod +x "$WORK_DIR/bin/ctsynth"
    export PATH="$WORK_DIR/bin:$PATH"

    # the steps that are functions of this script run in a child bash (`timeout` runs programs)
    export MODE PY WHEEL_DIR WHEEL_PYTHONS WORK_DIR CASES CONFIGS CORE_PACKAGES NUMERIC_PACKAGES PLATFORMS
    export -f setup missing_dists check_wheels prepare_caches platform_args dists_of
    if ! run_step setup "$T_SETUP" bash -euo pipefail -c setup; then
        echo "setup failed: nothing else can run"; print_summary; return 1
    fi
    if [[ $MODE == gpu ]] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        echo "no CUDA device visible to $PY: this is the GPU run (use --dry-run on a CPU)"; return 2
    fi
    local accelerator=cuda device=cuda
    [[ $MODE == dry ]] && accelerator=cpu device=cpu
    if [[ $MODE == dry && -n $DRY_STAGE1_FROM ]]; then
        CONFIGS=$(for c in $CONFIGS; do with_gpu_stage1 "$c"; done | tr '\n' ' ')
        echo "dry run: configs $CONFIGS"
    fi

    run_step prepare "$T_PREP" bash -euo pipefail -c prepare_caches

    local configs_csv preps_csv c
    configs_csv=$(echo $CONFIGS | tr ' ' ',')
    preps_csv=$(for c in $CONFIGS; do printf '%s,' "$WORK_DIR/prep-$(label_of "$c")"; done); preps_csv=${preps_csv%,}
    run_step sampling "$T_SAMPLE" "$PY" benchmarks/device/sample_memory.py --config "$configs_csv" \
        --prep "$preps_csv" --precision "$PRECISIONS" --accelerator "$accelerator" --work "$WORK_DIR/sample"

    for c in $CONFIGS; do
        local label var
        label=$(label_of "$c"); var="T_TRAIN_${label^^}"; var=${var//[^A-Z0-9_]/_}
        run_step "train-$label" "${!var:-$T_TRAIN}" "$PY" benchmarks/bench_train.py --config "$c" \
            --prep "$WORK_DIR/prep-$label" --cases "$CASES" --steps "$STEPS" --warmup "$WARMUP" --samples 1 \
            --accelerator "$accelerator"
    done

    if [[ ! -f benchmarks/bench_quality.py ]]; then
        echo; echo "== quality: SKIPPED: benchmarks/bench_quality.py does not exist (yet)"
        SUMMARY+=("quality: SKIPPED, benchmarks/bench_quality.py does not exist")
    else
        local left=$(( TOTAL_S - SECONDS - KILL_GRACE_S - 5 ))
        if (( left < T_QUALITY_MIN )); then
            echo; echo "== quality: SKIPPED (${left} s left, under T_QUALITY_MIN=$T_QUALITY_MIN)"
            SUMMARY+=("quality: SKIPPED, out of time")
        elif [[ $MODE == dry ]]; then
            run_step quality "$left" "$PY" benchmarks/bench_quality.py --smoke --device "$device" \
                --work "$WORK_DIR/quality" $QUALITY_EXTRA
        else
            local budget=$QUALITY_BUDGET_MIN
            [[ -n $budget ]] || budget=$(awk -v s="$left" -v o="$QUALITY_OVERHEAD_S" \
                'BEGIN { b = (s - o) / 60; if (b < 0.5) b = 0.5; printf "%.1f", b }')
            run_step quality "$left" "$PY" benchmarks/bench_quality.py --budget-min "$budget" --device "$device" \
                --n "$QUALITY_N" --samples "$QUALITY_SAMPLES" --work "$WORK_DIR/quality" $QUALITY_EXTRA
        fi
        if [[ -d $WORK_DIR/quality ]]; then
            (cd "$WORK_DIR/quality" && find . -type f -size -2M \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \
                -o -name '*.txt' -o -name '*.csv' -o -name '*.html' -o -name '*.log' -o -name '*.png' \) -print0 |
                tar -czf "$OUT_DIR/quality-results.tar.gz" --null -T -) &&
                echo "quality results: $OUT_DIR/quality-results.tar.gz" || true
        fi
    fi

    print_summary
    return $FAILED
}

rc=0
main 2>&1 | tee -a "$LOG" || rc=$?
echo "log: $LOG (exit $rc)"
exit "$rc"
