"""The predictor service: endpoints and predictions."""
