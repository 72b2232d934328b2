"""The HTTP API, /sadtalker/v1: one generation, and batch jobs that survive restarts (see README, "HTTP API").

Needs fastapi (the WebUI has it; standalone: `pip install fastapi uvicorn`). Nothing here imports the WebUI.
"""

from .inputs import PathPolicy
from .service import PREFIX, ApiService, ApiSettings, create_app, exclusive, parse_credentials, register

__all__ = ["PREFIX", "ApiService", "ApiSettings", "PathPolicy", "create_app", "exclusive", "parse_credentials",
           "register"]
