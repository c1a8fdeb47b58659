"""trading-daemon: turns TradingView alerts into futures orders, safely and in order."""

__version__ = "0.1.0"

__all__ = ["__version__"]
