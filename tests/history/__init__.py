"""As-of queries (GetAccountAsOf) against the views."""
