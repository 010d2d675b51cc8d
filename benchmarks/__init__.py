"""llmkata benchmarks: correctness first, then speed as a ratio to a baseline measured in the same run."""
