"""Triton Inference Server Python backend model: a cnnserve model file on cnnserve's own ONNX Runtime session.

The session is made by cnnserve's `server/runtime.py` (imported from $CNNSERVE_ROOT), so its options
(providers, intra/inter-op threads, graph optimisation, warm-up) are exactly the cnnserve server's.
Triton's dynamic batcher hands `execute` the requests it merged; they run as one ONNX Runtime call that
computes the outputs any of them asked for (all the config lists when one asks for none: a logits-only config,
as `lenet_bn/config.pbtxt`, runs the logits alone; an all-maps one, as `lenet_bn_maps/`, every feature map),
and each request gets back what it asked for.
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
        self.output_names = [output["name"] for output in config["output"]]      # the config's order
        model_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = RuntimeOptions()
        self.runtime = ModelRuntime(model_file, options)
        self.runtime.warm_up(options.warmup_runs)

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        images = batches[0] if len(batches) == 1 else np.concatenate(batches)
        wanted = [set(r.requested_output_names()) or set(self.output_names) for r in requests]
        names = [name for name in self.output_names if any(name in w for w in wanted)]
        outputs = self.runtime.run(images, names)
        responses, offset = [], 0
        for batch, asked in zip(batches, wanted):
            end = offset + len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, outputs[name][offset:end]) for name in names if name in asked]))
            offset = end
        return responses
