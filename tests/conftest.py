from llmkata.spec import profiles

profiles.load()
