"""The HTTP face: the API's routes, middleware, OpenAPI document, job documents and links.

Mounted at /api/v1 by app.py. Nothing in the domain imports this package.
"""

from .middleware import ApiMiddleware, LoopbackOnlyMiddleware
from .routes import routes

__all__ = ["ApiMiddleware", "LoopbackOnlyMiddleware", "routes"]
