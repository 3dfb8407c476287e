"""loss-service: per-sample and mean losses over HTTP, computed as Keras and PyTorch compute them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loss-service")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
