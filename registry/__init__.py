"""Identity registry for individual animals."""

__version__ = "0.1.0"
