"""The paper's losses: robust next-token loss (lm) and global contrastive losses (contrastive)."""

from tempnet.losses.contrastive import ClipLoss, CompositionalState, CyClipLoss, ISogCLRLoss, RobustGCLoss, SogCLRLoss
from tempnet.losses.lm import OBJECTIVES, LMObjective, build_objective, dro_lm_loss, objective_terms, tempered_ce_loss

#: Contrastive losses by the names the Bimodal-CL trainer and configs use. Each is called as
#: loss_fn(image_features, text_features, image_ids, text_ids, tau_image=None, tau_text=None) and returns
#: {"loss", its named terms, "tau_image", "tau_text"}: minimise out["loss"], log the rest (all detached).
CONTRASTIVE_LOSSES = {
    "clip": ClipLoss,
    "cyclip": CyClipLoss,
    "sogclr": SogCLRLoss,
    "isogclr": ISogCLRLoss,
    "isogclr_tempnet": RobustGCLoss,
}

__all__ = [
    "dro_lm_loss", "tempered_ce_loss", "objective_terms", "LMObjective", "OBJECTIVES", "build_objective",
    "ClipLoss", "CyClipLoss", "SogCLRLoss", "ISogCLRLoss", "RobustGCLoss", "CompositionalState", "CONTRASTIVE_LOSSES",
]
