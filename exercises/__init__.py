# Generated from reference/__init__.py by `llmkata exercises`. This copy is yours: replace each stub.
