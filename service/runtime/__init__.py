"""Process and fleet: workers, supervision, signals, logging, metrics, CPU quota."""
