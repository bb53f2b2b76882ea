"""The training worker: consumes job events and runs the AutoML search."""
