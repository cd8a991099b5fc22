#!/usr/bin/env bash
# Runs the GPU performance benchmarks in one go on a device machine; logs and JSON go to $OUT (or ./perf_out).
# Usage: bash benchmarks/perf/run_gpu.sh [pix2video rerender propagation vidmp3 cli cli_scaling cli_vidmp3 fatezero cli_fatezero cli_rave metrics metrics_v2vbench cli_rerender cli_tokenflow_prompts cli_compile]
# The cli* entries run `python -m vedit.run` in fresh processes (bench_cli.py) on SOURCE, a folder of
# frames (default: DAVIS blackswan from davis-mini beside the checkout).
set -u
OUT=${OUT:-perf_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
DT=${DTYPE:-bfloat16}
SOURCE=${SOURCE:-../shared/data/davis-mini/JPEGImages/480p/blackswan}
CLI="benchmarks/perf/bench_cli.py --source $SOURCE --override backbone=random backbone.dtype=$DT +metrics.clip.load_weights=false"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for b in "${@:-pix2video rerender propagation vidmp3}"; do
  for name in $b; do
    limit=${BENCH_TIMEOUT:-280}
    case $name in
      pix2video)   cmd="benchmarks/perf/bench_pix2video.py --backbone random --device cuda --dtype $DT --frames 48 --size 512 --steps 50 --inversion-batch-size 48 --peer --peer-frames 12 ${P2V_ARGS:-}" ;;
      rerender)    cmd="benchmarks/perf/bench_rerender.py --backbone random --device cuda --dtype $DT --frames 21 --size 512 --key-interval 10 --peer ${RR_ARGS:-}" ;;
      propagation) cmd="benchmarks/perf/bench_propagation.py --device cuda --size 512 --frames 21 --key-interval 10 --synthetic ${PR_ARGS:-}" ;;
      vidmp3)      cmd="benchmarks/perf/bench_vidmp3.py --backbone random --device cuda --dtype $DT --frames 16 --size 512 --tune-steps 100 --steps 50 --peer ${VM_ARGS:-}" ;;
      cli)         cmd="$CLI --methods pix2video rerender tokenflow --frames 50"; limit=${BENCH_TIMEOUT:-590} ;;
      cli_scaling) cmd="$CLI --methods pix2video rerender --frames 16 128 --videos 1"; limit=${BENCH_TIMEOUT:-590} ;;
      cli_vidmp3)  cmd="$CLI --methods vidmp3 --frames 80 --videos 1 --method-override vidmp3:method.params.dino_model=random --method-override vidmp3:estimators.depth_anything_model=random"; limit=${BENCH_TIMEOUT:-590} ;;
      fatezero)    cmd="benchmarks/perf/bench_fatezero.py --backbone random --device cuda --dtype $DT --frames 50 --size 512 --steps 50 --peer --peer-frames 8 ${FZ_ARGS:-}"; limit=${BENCH_TIMEOUT:-590} ;;
      cli_fatezero) cmd="$CLI --methods fatezero --frames 50"; limit=${BENCH_TIMEOUT:-590} ;;
      metrics)     cmd="benchmarks/perf/bench_metrics.py --device cuda --set ${METRICS_SET:-default} --frames 50 --size 512" ;;
      metrics_v2vbench) cmd="benchmarks/perf/bench_metrics.py --device cuda --set v2vbench --frames 50 --size 512" ;;
      cli_rerender) R=method.params; P=$R.propagation
                   cmd="$CLI --methods rerender --frames 16 50 --videos 1 --variant released --variant before27 $R.occlusion=estimator $R.pixel_fusion.fidelity_mask=any_pixel $R.pixel_fusion.reference_noise=per_key $P.edge_guide=luminance $P.guide_warp=bilinear $P.temporal_mask=true $P.pos_guide=xy $P.poisson=false"; limit=${BENCH_TIMEOUT:-590} ;;
      cli_tokenflow_prompts) cmd="$CLI --methods tokenflow --frames 50 --videos 1 --prompts 2"; limit=${BENCH_TIMEOUT:-590} ;;
      cli_compile) CC=$(mktemp -d)  # repeat 0 of the compile variant fills the cache (cold), repeat 1 reads it (warm)
                   cmd="$CLI --methods ${COMPILE_METHODS:-pix2video rerender tokenflow} --frames 50 --repeats 2 --variant eager --variant compile backbone.compile=true backbone.compile_cache=$CC"; limit=${BENCH_TIMEOUT:-590} ;;
      cli_rave)    cmd="$CLI --methods rave --frames 16 50 --variant default --variant released method.params.grid_batch=4 method.params.inversion_batch=36"; limit=${BENCH_TIMEOUT:-590} ;;
    esac
    echo "=== $name: python $cmd"
    timeout "$limit" python3 $cmd --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    echo "exit $?"; tail -n 25 "$OUT/$name.log"
  done
done
