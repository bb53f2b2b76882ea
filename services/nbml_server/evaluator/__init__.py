"""The evaluator service: leaderboards, holdout metrics, feature importance."""
