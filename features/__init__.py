"""Features: each feature defined once, used by the stream, the training sets and the API (Part 3)."""
