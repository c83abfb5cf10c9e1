"""Result codes of the matching subsystem (the 3xxx range)."""

from enum import IntEnum


class ResultCode(IntEnum):
    """Why the engine rejected a command (or cancelled a triggered stop).

    The numeric values are stable: clients and the API map them to
    `{"code": 3003, "error": "bad_tick", "message": ...}`. The `reason`
    string in events is the lower-case member name.
    """

    OK = 0
    UNKNOWN_ORDER = 3001
    DUPLICATE_ORDER_ID = 3002
    BAD_TICK = 3003
    BAD_LOT = 3004
    OUTSIDE_BAND = 3005
    POST_ONLY_WOULD_TAKE = 3006
    FOK_UNFILLABLE = 3007
    BAD_QTY = 3008
    BAD_PRICE = 3009
    BAD_ORDER_TYPE = 3010
    BAD_SIDE = 3011
    BAD_ID = 3012
    BAD_TRIGGER = 3013
    REDUCE_ONLY_UNAVAILABLE = 3014
    REDUCE_ONLY_WOULD_INCREASE = 3015
    NOT_AMENDABLE = 3016
    BOOK_FULL = 3017
    INVALID_COMMAND = 3018

    @property
    def reason(self) -> str:
        """Return the stable snake_case reason used in events."""
        return self.name.lower()


# The core looks reasons up by plain int so the hot path never touches enum
# machinery.
REASONS: dict[int, str] = {code.value: code.reason for code in ResultCode}
