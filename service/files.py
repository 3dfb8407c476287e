"""`service.files`, the documented import path of `service.offline.files`."""

from service.offline.files import OutputError

__all__ = ["OutputError"]
