"""Preference losses over summed answer log-probabilities, one value per pair (or unpaired example).

Inputs are per sequence: the policy's log-probability of the answer (summed over its tokens),
the reference model's (precomputed once, see train/dpo.py), and the answer's length in tokens.
With the log-ratio r = log pi(y|x) - log pi_ref(y|x), chosen c and rejected r, and delta = r_c - r_r:

- dpo    (Rafailov et al. 2023), with conservative label smoothing e (cDPO):
         -(1 - e) log sigmoid(beta delta) - e log sigmoid(-beta delta)
- ipo    (Azar et al. 2023), on length-averaged log-ratios as its authors and TRL use them:
         (r_c / |y_c| - r_r / |y_r| - 1 / (2 beta))^2
- hinge  (SLiC, Zhao et al. 2023): max(0, 1 - beta delta)
- simpo  (Meng et al. 2024), no reference: -log sigmoid(beta (m_c - m_r) - gamma), m = log pi / |y|
- orpo   (Hong et al. 2024), no reference: -m_c - beta log sigmoid(log odds(c) - log odds(r)),
         with odds = p / (1 - p) on the length-averaged probability p = exp(m)
- kto    (Ethayarajh et al. 2024), unpaired: w_d (1 - sigmoid(beta (r - z))) for a desirable answer and
         w_u (1 - sigmoid(beta (z - r))) for an undesirable one, where z, the reference point, is the
         batch's mean log-ratio, clipped at 0 and not differentiated. (The paper estimates z on
         mismatched prompt/answer pairs; the batch's own answers save that extra forward pass.)

Rewards, for logging and reward accuracy: beta r for the losses with a reference, beta m without.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIR_LOSSES = ("dpo", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


def pair_losses(kind: str, policy_c: torch.Tensor, policy_r: torch.Tensor, ref_c: torch.Tensor | None,
                ref_r: torch.Tensor | None, len_c: torch.Tensor, len_r: torch.Tensor, beta: float,
                label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, and the chosen and rejected rewards (detached)."""
    len_c, len_r = len_c.clamp(min=1), len_r.clamp(min=1)
    if kind in REFERENCE_FREE:
        mean_c, mean_r = policy_c / len_c, policy_r / len_r
        if kind == "simpo":
            logits = beta * (mean_c - mean_r) - simpo_gamma
            losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
        else:
            # log(1 - p) as log(-expm1(m)): exact where p is close to 1, where log1p(-exp(m)) loses digits
            log_odds = (mean_c - mean_r) - (torch.log(-torch.expm1(mean_c)) - torch.log(-torch.expm1(mean_r)))
            losses = -mean_c - beta * F.logsigmoid(log_odds)
        return losses, (beta * mean_c).detach(), (beta * mean_r).detach()
    if ref_c is None or ref_r is None:
        raise ValueError(f"the {kind} loss needs reference log-probabilities")
    ratio_c, ratio_r = policy_c - ref_c, policy_r - ref_r
    delta = ratio_c - ratio_r
    if kind == "dpo":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif kind == "ipo":
        losses = (ratio_c / len_c - ratio_r / len_r - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:
        raise ValueError(f"unknown preference loss {kind!r}; choose from {', '.join(PAIR_LOSSES)} or kto")
    return losses, (beta * ratio_c).detach(), (beta * ratio_r).detach()


def kto_losses(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, beta: float,
               desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses, rewards (detached) and the reference point z of the batch."""
    ratio = policy - ref
    z = ratio.detach().mean().clamp(min=0)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))))
    return losses, (beta * ratio).detach(), z
