"""Benchmarks of adasplash-compile against SDPA (flash) and the ``adasplash`` package (DESIGN.md section 6).

``python -m benchmarks.run`` runs them; see benchmarks/README.md.
"""
