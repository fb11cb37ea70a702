"""The run's routing policy: for each destination the proxy is asked for, the tailnet node, a
direct dial from this host, or a refusal (and why). The proxy's one dialer lives here."""
from .route import RouteDialer
from .view import TailnetView

__all__ = ["RouteDialer", "TailnetView"]
