"""Redis state: the only code that talks to Redis."""
