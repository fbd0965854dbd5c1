//! Cross-packet tests: spec byte vectors, malformed inputs, partial input, round trips.
