"""pynet package."""
