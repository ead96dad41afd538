"""``torch.optim.NAdam``: placeholder, being written (replace this whole file)."""


def NAdam(*args, **kwargs):
    raise NotImplementedError("NAdam is not written yet")
