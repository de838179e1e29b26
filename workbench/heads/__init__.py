"""Classifier heads: the zoo, nested tuning, the SVM fast path, ensembles."""
from workbench.heads.ensembles import VOTE_KINDS, stack, vote
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import HEADS, HeadSpec, UnknownHeadError, get_head, list_heads, register_head

__all__ = ["HEADS", "HeadSpec", "TunedHead", "UnknownHeadError", "VOTE_KINDS", "get_head", "list_heads",
           "register_head", "stack", "vote"]
