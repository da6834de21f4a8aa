"""The banking bounded context, wired into the generic infrastructure in context.py."""
