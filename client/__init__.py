"""The client side: the command-line client, the load generator, and what both need to reach a server.

It never imports the server or ONNX Runtime (tests/test_import_contract.py), so `pip install
'cnnserve[client]'` is enough to call a server.
"""
