"""Resource ids: a short type prefix, then 26 base-32 characters: a microsecond
timestamp (52 bits) and 78 random bits.

Ids sort by creation time, so a store that keeps keys sorted lists newest first by
reading backwards; they are generated, never taken from user input. Microseconds
(not ULID's milliseconds) keep back-to-back records, such as the history of fast
calls, in order.
"""

import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    value = ((time.time_ns() // 1000) << 78) | (int.from_bytes(os.urandom(10), "big") >> 2)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
