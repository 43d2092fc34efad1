"""MLServer custom runtime: a cnnserve model file on cnnserve's own ONNX Runtime session.

The session is made by cnnserve's `server/runtime.py` (imported from $CNNSERVE_ROOT), so its options
are exactly the cnnserve server's. MLServer's adaptive batching (model-settings.json: max_batch_size,
max_batch_time) merges requests before `predict`, which runs them as one ONNX Runtime call.
"""
import os
import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class CnnserveOnnx(MLModel):
    async def load(self) -> bool:
        sys.path.insert(0, os.environ["CNNSERVE_ROOT"])
        from server.runtime import ModelRuntime, RuntimeOptions

        options = RuntimeOptions()
        self.runtime = ModelRuntime(Path(await get_model_uri(self.settings)), options)   # uri: relative to model-settings.json
        self.runtime.warm_up(options.warmup_runs)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])          # uint8 [N, 1, 28, 28]
        logits = self.runtime.run(images, ["logits"])["logits"]
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output("logits", logits)])
