"""The llmkata specification: one test file per chapter, run against any implementation (see `contract.py`)."""
