"""Deployment helpers for No Brains ML (Envoy front proxy configuration)."""
