"""``torch.optim.ASGD``: placeholder, being written (replace this whole file)."""


def ASGD(*args, **kwargs):
    raise NotImplementedError("ASGD is not written yet")
