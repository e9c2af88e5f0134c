"""Every metric omnicanal exposes, declared once (see :mod:`monitoring.metrics`)."""
