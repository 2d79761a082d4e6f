"""The performance harness: `make bench` (or `python -m benchmarks`) measures start-up, the agent's overhead around
the editor, retrieval, batched candidates and memory, and writes the table to benchmarks/RESULTS.md."""
