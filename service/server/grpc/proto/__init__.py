"""grpc_predict_v2.proto and the stubs grpcio-tools made from it (scripts/grpc_stubs.py)."""
