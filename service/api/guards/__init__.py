"""Request guards, as pure ASGI middleware: API keys, body limits (gzip included) and bounds on
heavy requests in number, memory and time. (Request ids and access logs are monitoring's.)

Each refuses before the body is read in full: with RFC 9457 problem details, or on the Open
Inference Protocol's /v2 routes with its `{"error": "..."}` body.
"""

from service.api.guards.body_limit import INFLATED_PIECE, BodyLimit
from service.api.guards.budget import connection_limit
from service.api.guards.deadline import Deadline
from service.api.guards.heavy import HeavyRequests
from service.api.guards.keys import ApiKeys
from service.api.guards.refusals import KEY_REFUSALS, REFUSALS
from service.api.guards.slots import HEAVY_SLOT, Slot

__all__ = [
    "HEAVY_SLOT",
    "INFLATED_PIECE",
    "KEY_REFUSALS",
    "REFUSALS",
    "ApiKeys",
    "BodyLimit",
    "Deadline",
    "HeavyRequests",
    "Slot",
    "connection_limit",
]
