"""The book's classic CNNs for Fashion-MNIST, each with named feature taps."""
# isort: skip_file
# (importing the family modules registers their builders, and their order is the book's order)
from cnnserve.entry import exit_if_missing

# `python -m models.train` and the other commands of this package import it before their own module
# runs: a missing torch is reported here, in one line.
with exit_if_missing("train"):
    from models.builders import FeatureTap, TapNet, register_model
    from models.registry import create_model, list_models

    from models import lenet, alexnet, vgg, nin, googlenet, resnet, densenet  # noqa: F401

__all__ = ["FeatureTap", "TapNet", "create_model", "list_models", "register_model"]
