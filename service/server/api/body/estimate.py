"""The memory estimate of a body: an upper bound on what its parse and validation hold."""

from __future__ import annotations

from service.server.api.body.formats import JSON_MEDIA_TYPE, NPZ_MEDIA_TYPE
from service.server.api.body.npz import NPZ_ERRORS, declared_members
from service.server.api.body.receive import Body
from service.server.api.json_arrays import occurrences

# Parsing a JSON body holds, at its peak, up to this much per number and per array in its text
# (a Python float, its list slot, list objects, the NumPy copies): the upper bounds measured by
# tests/api/test_budget.py over flat bodies, rows, one-element rows, integers and short decimals.
JSON_BYTES_PER_NUMBER = 96
JSON_BYTES_PER_ARRAY = 96
# And per object and per key (counted by its colon): a dict, and a key's string and dict slot
# (with the dict's growth), measured over lists of small objects and objects of many keys.
JSON_BYTES_PER_OBJECT = 128
JSON_BYTES_PER_KEY = 160


def decoded_bytes(media_type: str, body: Body) -> int:
    """An upper bound on the memory that parsing and validating `body` holds, the body included.

    Counting commas and brackets (`occurrences`, one cheap pass) is what tells a body of one-element
    rows (20x its size once parsed) from one of long rows (1.3x).
    """
    if media_type == JSON_MEDIA_TYPE:
        return json_decoded_bytes(body)
    if media_type == NPZ_MEDIA_TYPE:
        try:
            declared = sum(count * itemsize for _, count, itemsize in declared_members(bytes(body)))
        except NPZ_ERRORS:
            declared = 0  # malformed: the parser refuses it
        return len(body) + 2 * declared  # inflated, then an aligned or converted copy
    return 2 * len(body)  # Arrow: uncompressed columns are views of the body, plus a conversion


def json_decoded_bytes(text: Body) -> int:
    """`decoded_bytes` of JSON text."""
    numbers = occurrences(text, b",") + 1
    return (
        len(text)
        + JSON_BYTES_PER_NUMBER * numbers
        + JSON_BYTES_PER_ARRAY * occurrences(text, b"[")
        + JSON_BYTES_PER_OBJECT * occurrences(text, b"{")
        + JSON_BYTES_PER_KEY * occurrences(text, b":")
    )
