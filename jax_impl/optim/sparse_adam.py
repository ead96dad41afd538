"""``torch.optim.SparseAdam``: placeholder, being written (replace this whole file)."""


def SparseAdam(*args, **kwargs):
    raise NotImplementedError("SparseAdam is not written yet")
