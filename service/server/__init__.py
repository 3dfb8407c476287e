"""The server: the app factory (`app`), the HTTP protocol, the HTTP layer (`api`), gRPC (`grpc`),
monitoring, and starting uvicorn and its workers (`boot`). It calls the use cases, the engine and
the store below it; nothing below it imports it."""
