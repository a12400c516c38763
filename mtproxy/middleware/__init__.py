"""aiohttp middlewares, one per file."""

from .auth import Keys, auth_middleware
from .cors import add_cors
from .errors import error_middleware

__all__ = ["Keys", "add_cors", "auth_middleware", "error_middleware"]
