"""The book's classic CNNs for Fashion-MNIST, each with named feature taps."""
# isort: skip_file
# (importing the family modules registers their builders, and their order is the book's order)
from models.registry import FeatureTap, TapNet, create_model, list_models, register_model

from models import lenet, alexnet, vgg, nin, googlenet, resnet, densenet  # noqa: E402,F401

__all__ = ["FeatureTap", "TapNet", "create_model", "list_models", "register_model"]
