"""Pure logic of omnicanal: no I/O, no clocks unless passed in, testable in microseconds."""
