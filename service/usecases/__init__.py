"""What the service does, below its transports: computing a batch's losses (`compute`), and
logging rows and joining delayed labels (`ingest`). The HTTP layer and gRPC parse a request, call
these, and render their errors (`errors.UseCaseError`); these call the engine, the store and
monitoring, and know nothing of HTTP."""
