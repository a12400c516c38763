"""The one aiohttp middleware (front.py) and what it runs, one concern per file.

May import: config, errors, formats (the error shape of the route's client format is handed in by
the app factory, never looked up here).
"""

from .auth import Keys
from .cors import add_cors
from .front import front_door

__all__ = ["Keys", "add_cors", "front_door"]
