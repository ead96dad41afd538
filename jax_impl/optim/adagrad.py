"""``torch.optim.Adagrad``: placeholder, being written (replace this whole file)."""


def Adagrad(*args, **kwargs):
    raise NotImplementedError("Adagrad is not written yet")
