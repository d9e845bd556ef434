"""The project's exception tree.

    ActionstreamError
     ├── ConfigError        bad settings: raised at start-up, names the variable to fix
     ├── BrokerError        the embedded Kafka broker could not start / answer
     └── DeliveryError      Kafka did not acknowledge a produced record
"""

from __future__ import annotations

__all__ = ["ActionstreamError", "BrokerError", "ConfigError", "DeliveryError"]


class ActionstreamError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(ActionstreamError):
    """Settings are invalid. Operator action: fix the named ACTIONSTREAM_* variable and restart."""


class BrokerError(ActionstreamError):
    """The embedded broker failed. Operator action: read the broker log named in the message."""


class DeliveryError(ActionstreamError):
    """Kafka did not acknowledge records. Operator action: check broker health and topic existence."""
