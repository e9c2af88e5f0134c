"""Tools around the pipeline: the demo, the traffic generator, the benchmark, the importers of
public data sets, the evaluations and the local services they start. Production code never
imports them."""
