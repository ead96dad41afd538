"""``torch.optim.RMSprop``: placeholder, being written (replace this whole file)."""


def RMSprop(*args, **kwargs):
    raise NotImplementedError("RMSprop is not written yet")
