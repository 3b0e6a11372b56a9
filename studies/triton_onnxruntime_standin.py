"""A stand-in for Triton's ONNX Runtime backend, as a Triton Python-based backend.

The Triton server inside `nvidia-pytriton` has the Python backend only. Installed as
`BACKENDS/onnxruntime/model.py`, this file is what that server runs for a model whose config
says `platform: "onnxruntime_onnx"`: the server itself parses the config, checks each request
against its inputs, schedules (dynamic batching included) and answers over HTTP; this file only
runs the version folder's `model.onnx` with onnxruntime, the engine Triton's own ONNX Runtime
backend wraps. studies/triton_serve.py installs it; nothing in podkit imports it.
"""

import json
import os

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [entry["name"] for entry in config["input"]]
        self.outputs = [entry["name"] for entry in config["output"]]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            feed = {
                n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs
            }
            values = self.session.run(self.outputs, feed)
            tensors = [pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
