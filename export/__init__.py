"""Export PyTorch models to ONNX model repositories."""
