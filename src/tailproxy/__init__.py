"""tailproxy: run an unmodified program with its network traffic on a Tailscale tailnet."""
__version__ = "0.1.0"
