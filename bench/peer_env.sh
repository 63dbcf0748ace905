#!/bin/sh
# The environment of bench/encode.py's sentence-transformers ONNX peers: sentence-transformers 6.3's
# "onnx" extra does not resolve (optimum-onnx 0.1.0 needs transformers < 4.58), so the newest release
# whose extra does, 5.7.0, with optimum-onnx and the same CPU torch as the project.
set -e
cd "$(dirname "$0")/.."
test -x .venv-st-onnx/bin/python || python3 -m venv .venv-st-onnx
.venv-st-onnx/bin/python -m pip install --quiet torch==2.13.0
.venv-st-onnx/bin/python -m pip install --quiet "sentence-transformers[onnx]==5.7.0" "optimum-onnx[onnxruntime]==0.1.0" "transformers==4.57.6"
