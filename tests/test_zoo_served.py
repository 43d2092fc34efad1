"""Each shipped model scores all 10,000 test images through a real server, as the default repository serves
it, to within 0.1 point of the accuracy its weights record. Minutes of work (224-px models on the CPU): slow,
and a file of its own so that pytest-xdist runs it beside the rest of the zoo's tests."""
import numpy as np
import pytest

from client.cli import raw_image
from client.spawn import SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from models import list_models
from models.pretrained import get_weights

SHIPPED = list_models(trained=True)


@pytest.fixture(scope="module")
def shipped_server(shipped_repository, tmp_path_factory):
    server = SpawnedServer(shipped_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", SHIPPED)
def test_full_test_set_through_the_server_reproduces_the_recorded_accuracy(shipped_server, arch, fashion):
    info = shipped_server.stub.GetModel(pb.GetModelRequest(name=arch), timeout=10)
    assert info.trained and info.test_acc == get_weights(arch).test_acc_stored
    correct = 0
    for start in range(0, len(fashion.test_images), 64):
        images = fashion.test_images[start:start + 64]
        response = shipped_server.stub.Classify(
            pb.ClassifyRequest(model=arch, images=[raw_image(x) for x in images]), timeout=120)
        predicted = np.array([r.predictions[0].class_index for r in response.results])
        correct += int((predicted == fashion.test_labels[start:start + 64]).sum())
    assert abs(correct / len(fashion.test_images) - info.test_acc) <= 0.001
