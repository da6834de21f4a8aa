"""The query server process: ledger.v1.AccountQueryService, answered from the views alone."""
