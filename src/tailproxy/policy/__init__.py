"""The run's routing policy: for each destination the proxy is asked for, the tailnet node, a
direct dial from this host, or a refusal (and why). The proxy's one dialer lives here, with the
table that lets the preload connect by itself what the proxy would only dial directly, and the
hand-off that lets the node take what always goes to it without asking the proxy."""
from .handoff import NodeHandoff
from .publisher import TablePublisher
from .route import RouteDialer
from .table import RouteTableFile
from .view import TailnetView

__all__ = ["NodeHandoff", "RouteDialer", "RouteTableFile", "TablePublisher", "TailnetView"]
