"""The command server process: ledger.v1.AccountCommandService."""
