"""edge-agent: edge inference runtime for wind-turbine predictive maintenance.

The package is organised as stages joined by one plain type, :class:`edge_agent.window.Window`;
docs/ARCHITECTURE.md shows the shape.
"""
__version__ = "0.1.0"
