"""The server's side of the command line: starting uvicorn and its workers, and API keys for them.

The app factory (`service.app`), the HTTP protocol, monitoring and the HTTP layer stay where they
are for now; the CLI reaches the server through this package and `service.app` only.
"""
