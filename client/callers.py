"""Closed-loop callers that record, for every request, when it was sent and answered and which model version
answered it (or the error): the harness that watches a version roll out under load (tests/test_model_control.py,
bench/model_rollout.py). Half the callers speak cnnserve.v1 (Classify), half KServe v2 gRPC (ModelInfer).

The load generator (client/loadtest.py) counts and times requests across processes; this records each one,
in one process, because a rollout is judged request by request: which version, sent when.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc
from cnnserve.spec import IMAGE_SIDE, INPUT_NAME, LOGITS

PROTOCOLS = ("cnnserve", "kserve-grpc")


@dataclass(frozen=True)
class Answer:
    protocol: str
    sent: float          # time.monotonic()
    answered: float
    version: int         # 0 when it failed
    error: str = ""      # "CODE: details" of a failed request

    @property
    def latency_s(self) -> float:
        return self.answered - self.sent


class Callers:
    """`count` callers on a thread of their own, from `start()` until `stop()`; `answers` grows meanwhile."""

    def __init__(self, target: str, model: str, count: int = 16, timeout_s: float = 30.0):
        self.target, self.model, self.count, self.timeout_s = target, model, count, timeout_s
        self.answers: list[Answer] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="callers", daemon=True)

    def start(self, first_answers: int = 0, timeout_s: float = 60.0) -> Callers:
        """Start the callers; return once `first_answers` answers are in."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < first_answers:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"the callers had {len(self.answers)} answers after {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self) -> list[Answer]:
        self._stopping.set()
        self._thread.join(self.timeout_s + 10)
        return list(self.answers)

    def __enter__(self) -> Callers:
        return self.start(first_answers=self.count)

    def __exit__(self, *exc) -> None:
        self.stop()

    def failures(self) -> list[Answer]:
        return [answer for answer in list(self.answers) if answer.error]

    def first(self, version: int) -> Answer | None:
        """The first answer from `version`, by the time it came back."""
        return min((a for a in list(self.answers) if a.version == version), key=lambda a: a.answered, default=None)

    async def _run(self) -> None:
        pixels = bytes(IMAGE_SIDE * IMAGE_SIDE)
        classify_request = pb.ClassifyRequest(model=self.model, images=[
            pb.Image(tensor=pb.Tensor(shape=[IMAGE_SIDE, IMAGE_SIDE], dtype="uint8", data=pixels))])
        infer_request = kpb.ModelInferRequest(
            model_name=self.model, raw_input_contents=[pixels],
            inputs=[kpb.ModelInferRequest.InferInputTensor(name=INPUT_NAME, datatype="UINT8",
                                                           shape=[1, 1, IMAGE_SIDE, IMAGE_SIDE])],
            outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=LOGITS)])
        async with grpc.aio.insecure_channel(self.target) as channel:
            classify = classifier_pb2_grpc.ClassifierStub(channel).Classify
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

            async def send(protocol: str) -> int:
                if protocol == "cnnserve":
                    return (await classify(classify_request, timeout=self.timeout_s)).version
                return int((await infer(infer_request, timeout=self.timeout_s)).model_version)

            async def caller(protocol: str) -> None:
                while not self._stopping.is_set():
                    sent = time.monotonic()
                    try:
                        version, error = await send(protocol), ""
                    except grpc.aio.AioRpcError as failure:
                        version, error = 0, f"{failure.code().name}: {failure.details()}"
                    self.answers.append(Answer(protocol, sent, time.monotonic(), version, error))

            await asyncio.gather(*(caller(PROTOCOLS[i % len(PROTOCOLS)]) for i in range(self.count)))
