"""Benchmarks behind `featx bench`: they report numbers, tests assert behaviour.

- `featx bench extract` (featx/bench/extract.py): bare forward pass vs the full
  extract path on large generated JPEGs, and peak RSS per image count.
- `featx bench classify` (featx/bench/classify.py): the default grids' fit time
  on Kermany-sized synthetic embeddings.
"""
