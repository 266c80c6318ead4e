"""The run store: row keys, durable parts, assembly, the run directory, its lock and manifest."""
