"""The three ports the platform talks to: table store, blob store, event bus."""
