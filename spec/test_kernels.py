"""Chapter 14 — kernels: the fast paths of chapters 2, 4, 5, 6 and 8, each equal to its chapter's definition.

Every kernel is checked against the definition computed in float64 (values and gradients), for shapes that are not
multiples of any block, Tq ≠ Tk, fully masked rows and half precision; the model with kernels equals the model
without; the incremental BPE trainer learns exactly the merges of the textbook one.
"""

# ---------------------------------------------------------------- the incremental BPE trainer
