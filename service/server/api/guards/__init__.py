"""Request guards, as pure ASGI middleware: API keys, body limits (gzip included) and bounds on
heavy requests in number, memory and time. (Request ids and access logs are monitoring's.)

Each reads the policy of the route the request matched (`policy.RequestContext`), and refuses
before the body is read in full, in the route's dialect: RFC 9457 problem details, or the Open
Inference Protocol's `{"error": "..."}` body.
"""

from service.server.api.guards.body_limit import INFLATED_PIECE, BodyLimit
from service.server.api.guards.budget import connection_limit
from service.server.api.guards.deadline import Deadline
from service.server.api.guards.heavy import HeavyRequests
from service.server.api.guards.keys import ApiKeys
from service.server.api.guards.refusals import KEY_REFUSALS, REFUSALS
from service.server.api.guards.slots import Slot

__all__ = [
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
