"""Compiled modules built from ext/ (see setup.py); import them through edge_agent.native."""
