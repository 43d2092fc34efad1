"""How a model's served versions change (server/model_store.py) and how the index reports them
(server/model_control.py), over fake versions: no server, no ONNX Runtime, no model files. Which version stands in
for one that failed, which files are tried again, and that a version leaves only once its requests are done."""
import asyncio
import threading

from tritonclient.grpc import model_config_pb2 as mc

from cnnserve.metadata import ModelMetadata
from cnnserve.repository import ModelVersion
from cnnserve.spec import CLASSES
from server.metrics import Metrics
from server.model_control import version_entries
from server.model_store import WARMUP_PACE, ModelStore, Plan, ServedVersion
from server.runtime import RuntimeOptions

METADATA = ModelMetadata.from_json({
    "input": {"name": "image", "dtype": "uint8", "shape": [-1, 1, 28, 28]}, "labels": list(CLASSES),
    "outputs": [{"name": "logits", "shape": [-1, 10]}], "trained": True, "model_file": "model.onnx",
    "sha256": "0" * 64})


class FakeStore(ModelStore):
    """Builds a version unless its fingerprint says "broken"; `gate`, when cleared, holds each build."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, None, RuntimeOptions(), {}, Metrics())
        self.builds: list[tuple[int, object]] = []
        self.paces: list[float] = []           # each build's warm-up pace
        self.gate = threading.Event()
        self.gate.set()

    def build(self, name, version, fingerprint, pace=0.0):
        self.gate.wait(5)
        self.builds.append((version, fingerprint))
        self.paces.append(pace)
        if fingerprint == "broken":
            return f"{name} v{version}: model.onnx has sha256 1234…, but its metadata records 0000…"
        return ServedVersion(name, ModelVersion(name, version, None, METADATA, mc.ModelConfig(name=name)), None, None,
                             fingerprint)


def served(store: FakeStore) -> dict[int, object]:
    return {number: version.fingerprint for number, version in store.models["m"].versions.items()}


def test_a_failed_version_leaves_what_served_and_the_newest_replaced_version_stands_in(tmp_path):
    async def main():
        store = FakeStore(tmp_path)
        await store.update(Plan("m", {1: "a", 2: "a"}))            # latest { num_versions: 2 }
        assert served(store) == {1: "a", 2: "a"}
        await store.update(Plan("m", {2: "a", 3: "broken"}))
        assert served(store) == {1: "a", 2: "a"}, "version 1 stands in for the broken 3"
        assert "sha256" in store.models["m"].failed[3].reason and "serving versions 1, 2" in store.models["m"].reason
        await store.update(Plan("m", {3: "broken", 4: "a"}))
        assert served(store) == {2: "a", 4: "a"}, "4 serves; the newest of the replaced ones stands in for 3"
        assert [v for v, _ in store.builds].count(3) == 1, "the same broken files are not tried again"
        await store.update(Plan("m", {3: "fixed", 4: "a"}))
        assert served(store) == {3: "fixed", 4: "a"} and not store.models["m"].failed
        await store.update(Plan("m", {3: "fixed", 4: "broken"}))
        assert served(store) == {3: "fixed", 4: "a"}, "a changed version whose new files fail keeps its old ones"
        await store.update(Plan("m", {3: "fixed", 4: "broken"}), retry_failed=True)
        assert store.builds[-1] == (4, "broken"), "a load call tries failed files again"
        assert [entry.state for entry in version_entries(store.models["m"])] == ["READY", "READY"]
        assert "sha256" in version_entries(store.models["m"])[1].reason
    asyncio.run(main())


def test_with_nothing_served_what_built_serves(tmp_path):
    async def main():
        store = FakeStore(tmp_path)
        await store.update(Plan("m", {1: "a", 2: "broken"}))
        assert served(store) == {1: "a"}
        assert [(e.version, e.state) for e in version_entries(store.models["m"])] == [(1, "READY"), (2, "UNAVAILABLE")]
        await store.update(Plan("m", {}, "m/config.pbtxt: unreadable (no such file)"))
        assert served(store) == {1: "a"}, "an unreadable config leaves what serves"
        assert store.models["m"].reason.startswith("m/config.pbtxt: unreadable")
    asyncio.run(main())


def test_a_version_loaded_while_models_serve_paces_its_warm_up(tmp_path):
    async def main():
        store = FakeStore(tmp_path)
        await store.update(Plan("m", {1: "a"}))
        await store.update(Plan("m", {1: "a", 2: "b"}))
        assert store.paces == [0.0, WARMUP_PACE], "at start-up flat out; beside the models that serve, paced"
    asyncio.run(main())


def test_a_version_leaves_once_its_requests_are_done_and_the_index_shows_each_state(tmp_path):
    async def main():
        store = FakeStore(tmp_path)
        await store.update(Plan("m", {1: "a"}))
        old = store.get("m")
        old.enter()                               # a request looked version 1 up and is not answered yet
        store.gate.clear()
        update = asyncio.create_task(store.update(Plan("m", {2: "a"})))
        while not store.models["m"].loading:
            await asyncio.sleep(0.001)
        assert [(e.version, e.state) for e in version_entries(store.models["m"])] == [(1, "READY"), (2, "LOADING")]
        store.gate.set()
        while 2 not in store.models["m"].versions:
            await asyncio.sleep(0.001)
        assert store.get("m").version.version == 2, "new requests go to version 2 at once"
        assert [(e.version, e.state) for e in version_entries(store.models["m"])] == [(1, "UNLOADING"), (2, "READY")]
        await asyncio.sleep(0.05)
        assert not update.done(), "version 1 waits for its request"
        old.leave()
        await asyncio.wait_for(update, 5)
        assert [(e.version, e.state) for e in version_entries(store.models["m"])] == [(2, "READY")]
        await store.unload("m")
        assert [(e.version, e.state, e.reason) for e in version_entries(store.models["m"])] == [
            (0, "UNAVAILABLE", "unloaded")]
    asyncio.run(main())
