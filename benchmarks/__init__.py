"""yamlnet's benchmarks: every speed and memory figure of PRODUCT.md §6, measured as a
ratio of two sides in one run. `python -m benchmarks` runs them all and writes
benchmarks/RESULTS.md; `--quick` runs each at toy size (the test suite does, so none rots).
"""
