"""The gRPC inference service."""
