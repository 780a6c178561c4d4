"""Layout constants shared by the reference, the ops and the kernels."""

# Granularity of the saved tile-maximum table: one entry per TILE query rows x TILE keys.
TILE = 64
