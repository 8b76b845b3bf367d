"""dir package."""
