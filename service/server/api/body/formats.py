"""The body formats: their media types, and the arrays a batch body carries."""

JSON_MEDIA_TYPE = "application/json"
NPZ_MEDIA_TYPE = "application/x-npz"
ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
BATCH_MEDIA_TYPES = (JSON_MEDIA_TYPE, NPZ_MEDIA_TYPE, ARROW_MEDIA_TYPE)
ARRAY_FIELDS = ("predictions", "labels", "sample_weight")
