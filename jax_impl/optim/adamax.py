"""``torch.optim.Adamax``: placeholder, being written (replace this whole file)."""


def Adamax(*args, **kwargs):
    raise NotImplementedError("Adamax is not written yet")
