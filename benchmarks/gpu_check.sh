#!/usr/bin/env bash
# The GPU checks in one go, for a person with one CUDA GPU (about 3-5 minutes):
#   bash benchmarks/gpu_check.sh            (from the repository root, in the project's venv)
# 1. the CUDA tests (tests/test_cuda.py and every test that takes --device cuda),
# 2. benchmarks/bench_lst.py --device cuda in fp32, bf16 and fp16,
# 3. a short full_eval on CUDA (smallcnn-linf on shapes, 200 pairs, the paper's hyperparameters)
#    in fp32 and bf16, timed,
# then one summary of all three. Nothing is written outside a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here" >&2
    exit 2
fi
work=$(mktemp -d)
gpu=$(python -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB')")

python -m pytest -q tests/test_cuda.py tests/test_cli.py -k "cuda" > "$work/tests.txt" 2>&1
tests=$(tail -n 1 "$work/tests.txt")

for precision in fp32 bf16 fp16; do
    python benchmarks/bench_lst.py --device cuda --precision "$precision" --repeats 3 \
        > "$work/bench_$precision.txt" 2>&1
done

P="--step_size 1e-2 --iters 400 --pthresh 0.2 --adv_pert --adv_step_size 2e-3 --log_step 20"
for precision in fp32 bf16; do
    start=$(date +%s%N)
    python level_set_traversal.py smallcnn-linf shapes --full_eval $P --num_samples 100 \
        --rounds 2 --batch_size 200 --get_final_imgs --device cuda --precision "$precision" \
        --quiet --out_dir "$work/full_eval" > "$work/full_eval_$precision.txt" 2>&1
    echo $(( ($(date +%s%N) - start) / 1000000 )) > "$work/ms_$precision.txt"
done

echo "=== gpu_check on $gpu ==="
echo "tests: $tests"
for precision in fp32 bf16 fp16; do
    echo "--- bench_lst.py --device cuda --precision $precision"
    cat "$work/bench_$precision.txt"
done
for precision in fp32 bf16; do
    echo "--- full_eval on CUDA, $precision: $(cat "$work/ms_$precision.txt") ms"
    tail -n 1 "$work/full_eval_$precision.txt" | cut -c 1-300
done
echo "(all output in $work)"
