#!/usr/bin/env bash
# A separate benchmark environment with learn2learn 0.2.0 (it does not build on Python 3.11 from
# PyPI: its shipped Cython output predates 3.11). Regenerates the .pyx sources with Cython < 3.1
# and uses torch==2.14.1 + torchvision==0.29.1 (PyPI's torchvision does not import beside the
# local torch==2.13.0 CPU wheel). About 6 GB (torch 2.14.1 is a CUDA build).
#
#   bash benchmarks/speed/learn2learn_env.sh            # creates .venv-l2l
#   .venv-l2l/bin/python benchmarks/speed/meta_step.py --learn2learn
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV=${L2L_VENV:-.venv-l2l}
PYTHON=${PYTHON:-python3}
$PYTHON -m venv "$ENV"
PY="$ENV/bin/python"
$PY -m pip install --quiet --upgrade pip
$PY -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
$PY -m pip install --quiet "cython<3.1" "numpy<2" setuptools wheel
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY -m pip download --quiet --no-deps --no-binary learn2learn --no-build-isolation "learn2learn==0.2.0" -d "$work"
tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
src="$work/learn2learn-0.2.0"
# The shipped .c files include CPython 3.10 internals (longintrepr.h); regenerate them.
rm -rf "$src/.eggs"  # a bundled Cython 0.29 egg
find "$src/learn2learn" -name "*.pyx" -print0 | while IFS= read -r -d '' pyx; do
    "$ENV/bin/cython" -3 --fast-fail "$pyx" -o "${pyx%.pyx}.c"
done
# learn2learn's own requirements (gym, qpth, ...) are for its vision/RL modules; the MAML wrapper
# needs torch only. Install it without them and add what `import learn2learn` touches.
$PY -m pip install --quiet --no-build-isolation --no-deps "$src"
$PY -m pip install --quiet "gym<0.27" "qpth" "pillow" "requests" "tqdm" "scipy"
# metalm itself (its torch requirement is already met) for the model and the comparison.
$PY -m pip install --quiet --no-deps -e .
$PY -m pip install --quiet "transformers>=4.46" "peft>=0.13" pyyaml safetensors "datasets>=2.19" jinja2 \
    gguf accelerate matplotlib "numpy<2"
$PY -c "import learn2learn, torch; print('learn2learn', learn2learn.__version__, 'torch', torch.__version__)"
