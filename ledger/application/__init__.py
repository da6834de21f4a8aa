"""Generic application services: run a context's deciders against the event store."""
