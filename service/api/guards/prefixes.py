"""Which paths the guards treat as heavy (a slot and the memory budget) and which need an API key."""

HEAVY_PREFIXES = ("/v1/loss", "/v1/evaluate", "/v1/models/", "/v2/models/")
PROTECTED_PREFIXES = ("/v1/", "/v2")
