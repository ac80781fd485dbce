"""Keeping an idle daemon small: glibc malloc's arenas and the free memory it keeps.

Each thread that allocates can get a malloc arena of its own (up to 8 per core), and memory freed into an arena
stays with the process: after a burst of API requests (one thread per connection) an idle daemon kept ~10 MB
it no longer used. limit_arenas() caps the arenas before any thread starts; trim() hands free pages back to the
kernel (malloc_trim), which the main loop calls once connections stop arriving. Both are no-ops where the C
library is not glibc (musl has neither call and keeps little).
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # mallopt() parameter (glibc's malloc.h)
ARENAS = 2  # the main loop's and one for all request threads: requests are short and mostly wait on I/O

_libc = ctypes.CDLL(None, use_errno=True)


def _glibc_call(name: str):
    try:
        return getattr(_libc, name)
    except AttributeError:
        return None


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc malloc's arenas at `count`; True when the C library took it."""
    mallopt = _glibc_call("mallopt")
    if mallopt is None or _glibc_call("malloc_trim") is None:  # mallopt without malloc_trim: not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Return the free memory of every malloc arena to the kernel; True when some was released."""
    malloc_trim = _glibc_call("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(malloc_trim(0))
