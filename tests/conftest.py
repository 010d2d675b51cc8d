import torch

from llmkata.spec import profiles

profiles.load()
torch.set_num_threads(1)  # as in spec/conftest.py: small tensors, busy cores
