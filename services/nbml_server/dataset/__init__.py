"""The dataset service: upload, validation, profiling, preview, storage."""
