"""The view store port and its adapters."""
