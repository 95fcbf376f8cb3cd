"""The paper's losses: robust next-token loss (lm), the LM objectives by name (objectives), the LM head fused
with the temperature head and the loss (fused), and global contrastive losses (contrastive)."""

from tempnet.losses.contrastive import (ClipLoss, CompositionalState, ContrastiveLoss, CyClipLoss, ISogCLRLoss,
                                        RobustGCLoss, SogCLRLoss)
from tempnet.losses.fused import linear_tempnet_dro_loss
from tempnet.losses.lm import dro_lm_loss, objective_terms, tempered_ce_loss
from tempnet.losses.objectives import OBJECTIVES, LMObjective, Objective, TempNetSettings, build_objective

#: The contrastive losses by the names the Bimodal-CL trainer and configs use (`loss=NAME`): the one list of
#: names (config validation, `--help`, `clip_config.LOSS_NAMES` read it). Each is a `ContrastiveLoss`, built by
#: the trainer as cls.from_config(cfg.loss_args, num_samples), given TempNet temperatures when
#: cls.takes_tempnets, called as loss_fn(image_features, text_features, image_ids, text_ids, tau_image=None,
#: tau_text=None) and returning {"loss", its named terms, "tau_image", "tau_text"}: minimise out["loss"], log the
#: rest (all detached). A new loss is one such class plus one entry here.
CONTRASTIVE_LOSSES: dict[str, type[ContrastiveLoss]] = {
    "clip": ClipLoss,
    "cyclip": CyClipLoss,
    "sogclr": SogCLRLoss,
    "isogclr": ISogCLRLoss,
    "isogclr_tempnet": RobustGCLoss,
}

__all__ = [
    "dro_lm_loss", "tempered_ce_loss", "objective_terms", "LMObjective", "Objective", "OBJECTIVES", "build_objective",
    "TempNetSettings", "linear_tempnet_dro_loss",
    "ContrastiveLoss", "ClipLoss", "CyClipLoss", "SogCLRLoss", "ISogCLRLoss", "RobustGCLoss", "CompositionalState",
    "CONTRASTIVE_LOSSES",
]
