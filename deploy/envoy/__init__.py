"""Envoy front proxy: descriptor set, bootstrap config generation, process helper."""
