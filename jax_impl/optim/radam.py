"""``torch.optim.RAdam``: placeholder, being written (replace this whole file)."""


def RAdam(*args, **kwargs):
    raise NotImplementedError("RAdam is not written yet")
