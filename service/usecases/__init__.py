"""What the service does, below its transports: computing a batch's losses (`compute`), and
logging rows and joining delayed labels (`ingest`). The HTTP layer and gRPC parse a request, call
these, and render their errors (`errors.UseCaseError`); these call the engine and the store, report
to the recorder they are given (`recorder.Recorder`, the server's monitor), and import nothing of
the server."""
