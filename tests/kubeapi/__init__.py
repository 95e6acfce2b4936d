"""A stateful test stand-in for the Kubernetes API server (see server.py); tests only."""
