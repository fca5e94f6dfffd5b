"""The capture core: one loop that every change source plugs into."""
