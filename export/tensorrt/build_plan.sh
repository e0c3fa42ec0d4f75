#!/usr/bin/env bash
# Build TensorRT plans for the exported towers, on the GPU node that will serve them.
#
# A plan is specific to the GPU model and TensorRT version, so it is built where it runs (an init
# container of the Triton pod, or once per node pool), never committed. The ONNX files and the
# `configs/tensorrt.pbtxt` written by `mediasearch export` are the input; this script only adds
# `<model>/1/model.plan` next to `model.onnx`. Then start Triton with `--model-config-name=tensorrt`.
#
#   export/tensorrt/build_plan.sh model_repository clip          # fp16, default shapes
#   MAX_TEXT_BATCH=64 MAX_VISION_BATCH=32 export/tensorrt/build_plan.sh model_repository clip
#
# Needs `trtexec` and python3 (both in NVIDIA's TensorRT / Triton containers). The batch and shape ranges
# below must agree with max_batch_size in the configs (the manifest holds the context length and
# image size; they are read from it here, not repeated).
set -euo pipefail

repo=${1:?usage: build_plan.sh MODEL_REPOSITORY [NAME]}
name=${2:-clip}
manifest="$repo/$name.manifest.json"
[ -f "$manifest" ] || { echo "no $manifest: run mediasearch export first" >&2; exit 2; }
command -v trtexec >/dev/null || { echo "trtexec not found: run this inside NVIDIA's TensorRT or Triton image" >&2; exit 2; }

field() { python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, m))' "$manifest" "$1"; }
ctx=$(field context_length)
px=$(field 'image["crop"]')
text_max=$(field 'text["max_batch_size"]')
vision_max=$(field 'vision["max_batch_size"]')
text_opt=${OPT_TEXT_BATCH:-16}
vision_opt=${OPT_VISION_BATCH:-16}

build() {  # model, min shape, opt shape, max shape
  local dir="$repo/$1/1"
  echo "building $dir/model.plan ($2 .. $3 .. $4)"
  trtexec --onnx="$dir/model.onnx" --saveEngine="$dir/model.plan.tmp" --fp16 \
    --minShapes="$2" --optShapes="$3" --maxShapes="$4" --skipInference
  mv "$dir/model.plan.tmp" "$dir/model.plan"   # atomic: Triton never sees half a plan
}

# Text: sequence length from 2 (start + end token) to the context length; queries are short.
build "${name}_text" "input_ids:1x2" "input_ids:${text_opt}x16" "input_ids:${text_max}x${ctx}"
build "${name}_vision" "pixels:1x${px}x${px}x3" "pixels:${vision_opt}x${px}x${px}x3" "pixels:${vision_max}x${px}x${px}x3"
echo "done: start Triton with --model-config-name=tensorrt"
