"""A trial executor for search tests that answers every submitted trial at once with
the outcome a subclass scripts (`outcome(spec)`), in the coordinator's thread."""


class InstantExecutor:
    capacity = 1

    def __init__(self, data):
        self.data, self.pending = data, []

    def submit(self, spec):
        self.pending.append(spec)

    def collect(self, timeout_seconds):
        pending, self.pending = self.pending, []
        return [self.outcome(spec) for spec in pending]

    def outcome(self, spec):
        raise NotImplementedError

    def close(self):
        pass
