"""The HTTP layer: schemas, routes and error handling. It knows nothing of the math."""
