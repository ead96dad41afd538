"""``torch.optim.Adadelta``: placeholder, being written (replace this whole file)."""


def Adadelta(*args, **kwargs):
    raise NotImplementedError("Adadelta is not written yet")
