"""omnicanal: real-time omnichannel retail stream processing (Kafka -> Bytewax -> Redis)."""

__version__ = "0.1.0"
