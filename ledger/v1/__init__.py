"""Generated from protos/ledger/v1 by scripts/generate_protos.py; do not edit."""
