"""The projector process: keeps the read views up to date from the event log."""
