"""aiohttp middlewares, one per file."""

from .auth import auth_middleware
from .errors import error_middleware

__all__ = ["auth_middleware", "error_middleware"]
