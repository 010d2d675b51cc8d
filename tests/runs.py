"""What the tests of `llmkata train` share: a configuration written as the command line would take it."""


def as_flags(fields: dict) -> list[str]:
    """RunConfig fields as train flags.  Example: {"d_model": 32, "progress": False} -> ['--d-model', '32',
    '--no-progress']"""
    out = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out
