"""The run's routing policy: for each destination the proxy is asked for, the tailnet node, a
direct dial from this host, or a refusal (and why). The proxy's one dialer lives here, and the
table that lets the preload connect by itself what the proxy would only dial directly."""
from .publisher import TablePublisher
from .route import RouteDialer
from .table import RouteTableFile
from .view import TailnetView

__all__ = ["RouteDialer", "RouteTableFile", "TablePublisher", "TailnetView"]
