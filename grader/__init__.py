"""llmkata: a specification suite for building an LLM from scratch."""
