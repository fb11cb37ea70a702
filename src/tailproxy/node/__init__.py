"""The tailnet node: bring it up, dial through it, listen on it, talk to its LocalAPI."""
from .errors import (DialFailed, LocalAPIError, LoginRequired, NodeError, NodeStateError,
                     UpTimeout)
from .localapi import LocalAPI
from .node import Export, Listener, Node, NodeConfig, ParkedConnects, RelayEnd, TailnetConn

__all__ = ["Node", "NodeConfig", "TailnetConn", "RelayEnd", "Listener", "Export", "ParkedConnects",
           "LocalAPI",
           "NodeError", "NodeStateError", "UpTimeout", "LoginRequired", "LocalAPIError",
           "DialFailed"]
