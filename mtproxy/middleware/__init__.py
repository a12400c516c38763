"""The one aiohttp middleware (front.py) and what it runs, one concern per file."""

from .auth import Keys
from .cors import add_cors
from .front import front_door

__all__ = ["Keys", "add_cors", "front_door"]
