"""Facts every part of cnnserve shares (`cnnserve.spec`) and the `cnnserve` command (`cnnserve.cli`).

Nothing here imports torch, ONNX Runtime or Pillow, so the server, the client and the load
generator can import it without them.
"""
