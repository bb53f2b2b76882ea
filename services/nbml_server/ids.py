"""Resource ids: a short type prefix and a time-ordered random part (ULID layout).

Ids sort by creation time, so a store that keeps keys sorted lists newest first by
reading backwards; they are generated, never taken from user input.
"""

import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
