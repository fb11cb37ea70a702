"""The launcher: runs a program with the preload library, the proxy and the node behind it."""
