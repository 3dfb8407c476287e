"""The Open Inference Protocol over gRPC (server.py), from its .proto and grpcio-tools' stubs (proto/)."""
