"""Triton Inference Server Python backend model: a cnnserve model file on cnnserve's own ONNX Runtime session.

The session is made by cnnserve's `server/runtime.py` (imported from $CNNSERVE_ROOT), so its options
(providers, intra/inter-op threads, graph optimisation, warm-up) are exactly the cnnserve server's.
Triton's dynamic batcher hands `execute` the requests it merged; they run as one ONNX Runtime call.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        sys.path.insert(0, os.environ["CNNSERVE_ROOT"])
        from server.runtime import ModelRuntime, RuntimeOptions

        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        model_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = RuntimeOptions()
        self.runtime = ModelRuntime(model_file, options)
        self.runtime.warm_up(options.warmup_runs)

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        images = batches[0] if len(batches) == 1 else np.concatenate(batches)
        logits = self.runtime.run(images, [self.output_name])[self.output_name]
        responses, offset = [], 0
        for batch in batches:
            rows = logits[offset:offset + len(batch)]
            offset += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)]))
        return responses
