"""``torch.optim.Rprop``: placeholder, being written (replace this whole file)."""


def Rprop(*args, **kwargs):
    raise NotImplementedError("Rprop is not written yet")
