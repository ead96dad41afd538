"""``torch.optim.Muon``: placeholder, being written (replace this whole file)."""


def Muon(*args, **kwargs):
    raise NotImplementedError("Muon is not written yet")
