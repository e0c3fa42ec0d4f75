"""``config.pbtxt`` for each Triton model, in four flavours, from one :class:`ServingSpec`.

- ``config.pbtxt``: production, ``backend: "onnxruntime"`` on ``KIND_GPU`` (NVIDIA's Triton image).
- ``configs/cpu.pbtxt``: the local CPU flavour, ``backend: "python"`` with a generated ``model.py``
  that runs the same ``model.onnx`` in ONNX Runtime (the ``tritonserver`` in the nvidia-pytriton
  wheel has only the python backend). Started with ``--model-config-name=cpu``.
- ``configs/tensorrt.pbtxt``: ``platform: "tensorrt_plan"`` for a ``model.plan`` built on the GPU node
  by ``export/tensorrt/build_plan.sh``. Started with ``--model-config-name=tensorrt``.
- ``configs/onnx-cpu.pbtxt``: NVIDIA's Triton image without a GPU: ``backend: "onnxruntime"`` on
  ``KIND_CPU`` (the Helm chart's CPU profile). Started with ``--model-config-name=onnx-cpu``.

All four share model name, tensor names, dtypes, ``max_batch_size`` and ``dynamic_batching``. They
are built as ``ModelConfig`` protobuf messages (Triton's own schema, shipped in tritonclient), so a
config that Triton could not parse cannot be written.

The optional GPU-decode flavour (``mediasearch export --dali``, :mod:`mediasearch.export.dali`) adds
two models with one ``config.pbtxt`` each (Triton falls back to it whatever ``--model-config-name``
says): :func:`dali_config`, ``backend: "dali"`` on ``KIND_GPU``, and :func:`ensemble_config`,
``platform: "ensemble"`` chaining models output to input.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from mediasearch.model_manifest import PAD_ID_PARAMETER, VERSION_PARAMETER, ServingSpec, TensorSpec

CPU_INSTANCES = 2
DALI_THREADS = 4  # CPU threads of the DALI pipeline (parsing, the hybrid decoder's host part)


class Flavour(StrEnum):
    GPU = "gpu"  # config.pbtxt
    CPU = "cpu"  # configs/cpu.pbtxt
    TENSORRT = "tensorrt"  # configs/tensorrt.pbtxt
    ONNX_CPU = "onnx-cpu"  # configs/onnx-cpu.pbtxt: NVIDIA's image on CPU nodes

    @property
    def filename(self) -> str:
        return "config.pbtxt" if self is Flavour.GPU else f"configs/{self.value}.pbtxt"


def _tensor(spec: TensorSpec, message: type) -> object:
    return message(name=spec.name, data_type=mc.DataType.Value(f"TYPE_{spec.dtype}"), dims=list(spec.dims))


def _batched(spec: ServingSpec) -> mc.ModelConfig:
    return mc.ModelConfig(
        name=spec.model,
        max_batch_size=spec.max_batch_size,
        input=[_tensor(t, mc.ModelInput) for t in spec.inputs],
        output=[_tensor(t, mc.ModelOutput) for t in spec.outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(spec.preferred_batch_sizes),
            max_queue_delay_microseconds=spec.max_queue_delay_us,
        ),
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )


def model_config(
    spec: ServingSpec, flavour: Flavour, *, version: str, pad_id: int | None = None
) -> mc.ModelConfig:
    """The ``ModelConfig`` message of one model in one flavour."""
    cfg = _batched(spec)
    if flavour is Flavour.GPU:
        cfg.backend = "onnxruntime"
        cfg.default_model_filename = "model.onnx"
        cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    elif flavour is Flavour.ONNX_CPU:
        cfg.backend = "onnxruntime"
        cfg.default_model_filename = "model.onnx"
        cfg.instance_group.append(
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=CPU_INSTANCES)
        )
    elif flavour is Flavour.TENSORRT:
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = "model.plan"
        cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    else:
        # Two instances of one thread each beat one instance of two threads on 2 cores: one pass
        # runs while the next batch forms (bench/encoders.py: 1.42x vs 0.87x the naive QPS at c32).
        cfg.backend = "python"
        cfg.instance_group.append(
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=CPU_INSTANCES)
        )
    cfg.parameters[VERSION_PARAMETER].string_value = version
    if pad_id is not None:
        cfg.parameters[PAD_ID_PARAMETER].string_value = str(pad_id)
    return cfg


def dali_config(spec: ServingSpec, *, version: str, threads: int = DALI_THREADS) -> mc.ModelConfig:
    """A DALI pipeline as a Triton model (``1/dali.py``, serialized by the backend at load).

    Its inputs are encoded files, one per request, of any length: ``allow_ragged_batch`` lets the
    dynamic batcher merge requests whose ``[1, bytes]`` shapes differ (the DALI backend takes each
    request's row as one sample), so clients never pad.
    """
    cfg = _batched(spec)
    for tensor in cfg.input:
        tensor.allow_ragged_batch = True
    cfg.backend = "dali"
    # One instance: DALI's memory pools grow per instance (the DALI backend's known limitations).
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    cfg.parameters["num_threads"].string_value = str(threads)
    cfg.parameters[VERSION_PARAMETER].string_value = version
    return cfg


def ensemble_config(spec: ServingSpec, chain: Sequence[ServingSpec], *, version: str) -> mc.ModelConfig:
    """``spec`` as a Triton ensemble that runs ``chain`` in order, each model's (first) output into
    the next one's (first) input: the ensemble's input feeds the first, the last one's output is
    the ensemble's. No batching of its own: each step's model batches."""
    cfg = mc.ModelConfig(
        name=spec.model,
        platform="ensemble",
        max_batch_size=spec.max_batch_size,
        input=[_tensor(t, mc.ModelInput) for t in spec.inputs],
        output=[_tensor(t, mc.ModelOutput) for t in spec.outputs],
    )
    for tensor in cfg.input:
        tensor.allow_ragged_batch = True  # passed through to the first step's ragged input
    source = spec.input.name
    for i, model in enumerate(chain):
        target = spec.output.name if i == len(chain) - 1 else f"{model.model}__{model.output.name}"
        cfg.ensemble_scheduling.step.append(
            mc.ModelEnsembling.Step(
                model_name=model.model,
                model_version=-1,  # the latest, as every model's version policy serves one
                input_map={model.input.name: source},
                output_map={model.output.name: target},
            )
        )
        source = target
    cfg.parameters[VERSION_PARAMETER].string_value = version
    return cfg


def render(cfg: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(cfg))


def parse(text: str) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` back with Triton's schema (raises on anything Triton would reject)."""
    return text_format.Parse(text, mc.ModelConfig())


CPU_MODEL_PY = '''\
"""Generated by `mediasearch export`: the CPU flavour of a Triton model (python backend).

Runs model.onnx (next to this file) in ONNX Runtime. Triton's dynamic batcher hands over several
requests at once; they are stacked into one forward pass (text rows padded with the model's pad id
to the longest row) and the result is split back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        params = config.get("parameters", {})
        self.pad_id = int(params.get("pad_id", {}).get("string_value", "0"))
        options = ort.SessionOptions()
        threads = int(os.environ.get("MEDIASEARCH_TRITON_ORT_THREADS", "0"))
        if threads:
            options.intra_op_num_threads = threads
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        if arrays[0].ndim == 2:  # token ids: pad to the longest row across requests
            width = max(a.shape[1] for a in arrays)
            arrays = [
                np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=self.pad_id) for a in arrays
            ]
        batch = np.concatenate(arrays, axis=0)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        responses, start = [], 0
        for a in arrays:
            part = out[start : start + a.shape[0]]
            start += a.shape[0]
            tensor = pb_utils.Tensor(self.output_name, part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''
