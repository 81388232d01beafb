"""The Open Inference Protocol over gRPC (generated code from inference.proto, and the server)."""
