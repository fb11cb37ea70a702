"""Export listeners: the program's TCP servers become reachable on the node's tailnet addresses."""
