"""The C library, loaded once in the zygote: every child calls into it while it hardens itself.

Loading it anew for each call (``ctypes.CDLL(None)``) builds a Python class and
looks every function up again, in each child, for each layer.
"""

from __future__ import annotations

import ctypes

LIBC = ctypes.CDLL(None, use_errno=True)
