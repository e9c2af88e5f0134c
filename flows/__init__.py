"""Dataflow wiring: connects the pure operators, the state store and Kafka. No logic here."""
