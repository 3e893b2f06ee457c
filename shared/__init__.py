"""The O365 provisioning service: plain Python, no Azure Functions imports.

Public names are re-exported here; modules are named after what they talk to or decide.
"""

from .config import Settings, load_settings
from .errors import ConfigError, PermanentError, ProvisioningError, SafetyStop, TransientError

__all__ = [
    "ConfigError",
    "PermanentError",
    "ProvisioningError",
    "SafetyStop",
    "Settings",
    "TransientError",
    "load_settings",
]
