"""
Benchmarks: Lake's paths against the raw driver on the same servers, in one run.
"""
