"""The trainer service: training jobs (the search itself runs in the workers)."""
