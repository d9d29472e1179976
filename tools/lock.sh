#!/usr/bin/env bash
# Refresh the dependency locks from pyproject.toml's ranges: the newest versions the registry serves today.
# The result is a reviewed commit, never implicit: run the README's test command on the new lock (or
# `bash .ci/run`) before committing requirements/*.lock.
#   requirements/app.lock   what `loramix ui` needs (README command 1)
#   requirements/test.lock  the same set plus the test tools, QLoRA's int8 backend, TensorBoard, the tagger and the oracles
#                           (README command 2, .ci/run); app.lock's pins constrain it, so the two agree.
# Both are installed with `pip install --no-deps -r …`: the lock is the whole set, and --no-deps keeps
# open-clip-torch from pulling torchvision and timm (see requirements/oracle.in).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v pip-compile >/dev/null || python -m pip install --quiet pip-tools
common=(--quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --annotation-style line
        --upgrade --unsafe-package torchvision --unsafe-package timm)
pip-compile "${common[@]}" -c requirements/torch.in -o requirements/app.lock pyproject.toml
pip-compile "${common[@]}" -c requirements/app.lock --extra test --extra quant --extra tensorboard --extra tagger -o requirements/test.lock \
    pyproject.toml requirements/oracle.in
# The local CPU wheel is 2.13.0+cpu; pin the plain version, which the CPU and the CUDA builds both satisfy.
sed -i -E 's/^torch==([0-9.]+)\+[a-z0-9]+/torch==\1/' requirements/app.lock requirements/test.lock
# --allow-unsafe keeps setuptools (torch asks for it) but also prints the two packages kept out on purpose.
sed -i -E '/^(torchvision|timm)==/d' requirements/app.lock requirements/test.lock
grep -E '^(torch|transformers|diffusers|peft|accelerate|gradio|safetensors)==' requirements/test.lock
