"""The five papers' headline claims, and the ledger that sets them against this suite's evidence.

:data:`PAPER_CLAIMS` lists, for each paper of ``shared/papers`` (chapters 02-06), its headline claims
(abstract, conclusion, main tables and figures): the claim in one sentence, the paper's setting and
its number(s), where the suite's evidence for it comes from, and how our setting differs. The
numbers were read from the PDF conversions in ``shared/papers``, whose tables are partly garbled;
a number is quoted only where the table could be reconstructed with certainty (checked against
the paper's own text or another table), otherwise the entry says "see Table N" / "see Fig. N"
(the figures are missing from the conversions altogether).

Evidence takes one of three forms:

* ``{"chapter_claim": "<prefix>"}`` or ``{"chapter_claim": ["<prefix>", ...]}``: the chapter's own
  paired verdict(s), the claim line(s) of the README's claims table (between
  ``<!-- claims:begin -->`` and ``<!-- claims:end -->``, written by ``scripts/claims_table.py`` from
  the executed notebooks) whose claim text starts with the prefix, within the paper's chapter;
* ``{"rows": ("a", "b"), "expected": +1}``: "row b beats row a" in the summary chapter's table of
  methods (labels :data:`ROW_LABELS`, evaluated on the same queries; ``expected=-1`` would claim
  that b is below a);
* ``{"none": "<why>"}``: not tested here, and why.

:func:`ledger_rows` joins the claims with the parsed README table (:func:`parse_claims_table`) and,
optionally, the summary's paired comparisons. It raises :class:`LedgerError` when a referenced claim
prefix matches no line (or several), so the ledger cannot silently go stale when a chapter's claim
lines change. Importing this module is cheap (no torch): it holds data and string handling only.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from .evaluate import CONTRADICTED, NOT_SEPARABLE, REPRODUCED
from .methods import STANDARD_ROWS

__all__ = [
    "PAPER_CLAIMS", "PAPERS", "ROW_LABELS", "LEDGER_COLUMNS", "VERDICTS", "MIXED",
    "NOT_TESTED", "NOT_EVALUATED", "LedgerError", "parse_claims_table", "readme_claims", "combine_verdicts",
    "find_claim_line",
    "validate_claims", "ledger_rows", "ledger_markdown",
]

#: The verdicts a claim line of a chapter (or a summary comparison) can carry.
VERDICTS = (REPRODUCED, CONTRADICTED, NOT_SEPARABLE)
#: Combined verdict of several claim lines that are partly reproduced, partly not separable.
MIXED = "mixed"
#: Verdict of a claim with ``{"none": ...}`` evidence.
NOT_TESTED = "not tested here"
#: Verdict of a summary-row claim when :func:`ledger_rows` gets no summary comparisons.
NOT_EVALUATED = "not evaluated (no summary comparisons given)"

#: paper short name -> its chapter.
PAPERS = {"ACK": "02", "ACTNET": "03", "Multi-layer": "04", "RoI": "05", "Clusters": "06"}

#: Rows of the summary chapter's table of methods (helpers.methods.STANDARD_ROWS).
ROW_LABELS = STANDARD_ROWS

#: The columns of :func:`ledger_rows`, in order.
LEDGER_COLUMNS = ("paper", "claim", "paper setting", "paper result", "our setting", "our evidence", "verdict")

# ------------------------------------------------------------------------------------------------
# How our settings differ (from the chapters' parameters cells and markdown).
# ------------------------------------------------------------------------------------------------

_DEMO = ("the synthetic demo set (14 objects cut from scikit-image's photographs and pasted over clutter "
         "textures shared across instances: 310 database images of which 100 distractors, 70 box-cropped "
         "queries, revisited protocol, per-query AP on the Medium setting), images 512 px on the long side")
_EFFNET = "EfficientNet-Lite0 with ImageNet weights, not fine-tuned"

_ACTNET_OURS = (f"{_EFFNET} and frozen: only the head (activation and power-normalisation parameters, and the "
                "PCA-whitening layer initialised with shrinkage 1) is trained, on cached maps of demo-train "
                "(120 images: 12 other objects and distractors; 78 training queries), with the paper's SGD settings (lr 1e-3, "
                "wd 5e-4, momentum 0.9, margin 0.1, 20 epochs) but mini-batches of 16 triplets instead of 64; "
                "streams on block6 (a signed linear-bottleneck output, rectified first) and conv_head instead of "
                f"ResNeXt-101's last two blocks fine-tuned end to end on 200K landmark images at 1024x768; {_DEMO} "
                "instead of Holidays / Oxford5k / ROxford / RParis / MPEG")

_ML_OURS = (f"{_EFFNET} instead of the authors' retrained AlexNet (or VGG16): it has one fc layer, so the paper's "
            "'fc2' is its 1280-d average-pooled conv_head (i.e. SPoC) and there is no fc1; conv5_1 / conv4_1 / "
            "conv3_1 are block5 / block3 / block2 (signed linear-bottleneck outputs), R-MAC-pooled instead of "
            "encoded as a bag of 50K-100K words (chapter 04 runs a 512-word BoW only as an aside); "
            f"{_DEMO} instead of Oxford5k / Holidays / UKB with the shorter side at 256 px")

_ROI_OURS = (f"{_EFFNET}: RoIs from conv_head (1280 channels, 16x12 cells) and its 1280-d 'fc' (average-pooled "
             "conv_head) instead of AlexNet conv5 and its 4096-d fc7; scikit-image SIFT (at most 300 keypoints "
             "at 320 px, 1000-word vocabulary learned on demo-train) instead of SURF; binarisation threshold, "
             "T_min = 0.05, T_rate = 4 are our choices (the paper gives none); fc features PCA-whitened to 256 "
             "dims on demo-train; the chapter warps RoI crops to 128 px (224 by default) and re-ranks N = 80 "
             f"candidates (100 by default), n = 10, k = 5; {_DEMO} instead of Oxford5k / Paris6k at 500 px")

_CL_OURS = (f"{_EFFNET}: conv_head (1280 channels, a 16x12 map at 512 px) instead of VGG16 conv5_3 (512 channels); "
            "C = 8 PCA dimensions instead of 4; the regional whitening is learned on demo-train (120 images) "
            "instead of Paris6k for Oxford5k and vice versa; 5 + 20 feature clusters and 5 colour clusters as in "
            f"Sec. 4.1; {_DEMO} instead of Oxford5k / Paris6k and their 100k distractors")

_ACK_OURS = (f"{_EFFNET}: codes from conv_head (1280 kernels, ReLU6 outputs, ties broken by the mean "
             "activation) instead of VGG16 / ResNet-50 last conv layers (512 / 2048 kernels), GeM "
             "brightening with a fixed p = 3")

#: The claim lines notebook 05 prints for each RoI claim (prefixes).
_ROI_LINES = {
    "bow": ["Tables 1-2: re-ranking with fc (crop) RoIs", "Tables 1-2: re-ranking with max-pooling RoIs",
            "Tables 1-2: re-ranking with sum-pooling RoIs"],
    "baseline": ["Tables 1-2: fc (crop) RoIs (K=", "Tables 1-2: max-pooling RoIs (K=", "Tables 1-2: sum-pooling RoIs (K="],
    "k": ["Tables 1-2: fc mAP grows with the number of RoIs K"],
    "fc": ["Tables 1-2: fc RoI features beat max-pooling", "Tables 1-2: fc RoI features beat sum-pooling"],
    "fast": ["Sec. 3.2.4: fast matching loses less than 1 mAP point"],
}


def _roi_evidence(key: str) -> dict:
    return {"chapter_claim": _ROI_LINES[key]}


# ------------------------------------------------------------------------------------------------
# The claims.
# ------------------------------------------------------------------------------------------------

PAPER_CLAIMS: list[dict] = [
    # ------------------------------------------------------------------ 02 ACK (paper 000)
    {
        "paper": "ACK", "chapter": "02",
        "claim": "Codes of a few hundred integer kernel indices match or beat the float GeM vector of the same "
                 "layer, at a tenth of its memory.",
        "paper_setting": "fine-tuned VGG16 (Radenović et al.), last conv layer, GeM vector vs GeM-brightened ACK "
                         "with dosd, no whitening or QE; Oxford5k/105k at 224x224 px (Table 1); Oxford, Paris, "
                         "Holidays (+100k distractors), Table 4",
        "paper_result": "Oxford5k mAP 64.96 (ACK, 256 ints, 6.2 MB) vs 64.75 (GeM, 512 floats, 64.8 MB), Table 1; "
                        "Table 4: 64.98 vs 64.75 (Oxford5k) but 76.26 vs 79.67 (Paris6k)",
        "evidence": {"rows": ("gem", "ack"), "expected": +1},
        "our_setting_differs": f"{_ACK_OURS}; summary rows 'gem' (1280 floats, no whitening) and 'ack' (n = 256 "
                               f"uint16, dosd), neither fine-tuned; {_DEMO} instead of Oxford5k at 224 px",
    },
    {
        "paper": "ACK", "chapter": "02",
        "claim": "At equal length, ACK codes of n integers beat the float vector reduced by PCA to n dimensions.",
        "paper_setting": "ResNet-50 (ImageNet pre-trained, and fine-tuned), last conv layer, GeM brightening vs "
                         "GeM + PCA; Holidays and Holidays101K, Table 2 (Sec. 5.7.1)",
        "paper_result": "Holidays mAP, codes (pre-trained / fine-tuned) vs PCA: n=4 54.72 / 60.71 vs 9.84; "
                        "n=16 71.9 / 75.38 vs 50.84; n=64 80.45 / 83.49 vs 74.32",
        "evidence": {"chapter_claim": [
            "Table 2: ACK codes of n integers beat PCA float vectors of n dimensions (n=4)",
            "Table 2: ACK codes of n integers beat PCA float vectors of n dimensions (n=16)",
            "Table 2: ACK codes of n integers beat PCA float vectors of n dimensions (n=64)",
        ]},
        "our_setting_differs": f"{_ACK_OURS}; PCA (no whitening) of the GeM vector learned on demo-train (120 images, "
                               f"so at most 119 dimensions; the paper does not say where its PCA is learned); "
                               f"{_DEMO} instead of Holidays",
    },
    {
        "paper": "ACK", "chapter": "02",
        "claim": "The position-sensitive dosd similarity ranks ACK codes much better than the order-blind "
                 "Jaccard similarity.",
        "paper_setting": "ResNet-50 (ImageNet pre-trained, and fine-tuned), GeM brightening, Paris6k, Fig. 5 "
                         "(Sec. 5.5)",
        "paper_result": "see Fig. 5 (the figure is not in the text; 'much higher than Jaccard')",
        "evidence": {"chapter_claim": [
            "Fig. 5: dosd beats Jaccard (n=16)",
            "Fig. 5: dosd beats Jaccard (n=64)",
            "Fig. 5: dosd beats Jaccard (n=256)",
            "Fig. 5: dosd beats Jaccard (n=1024)",
        ]},
        "our_setting_differs": f"{_ACK_OURS}; code lengths n = 16, 64, 256, 1024 (the paper's are in the missing "
                               f"figure; at n = 1280 = all kernels Jaccard is undefined); {_DEMO} instead of Paris6k",
    },
    {
        "paper": "ACK", "chapter": "02",
        "claim": "GeM brightening gives the best codes and SPoC (mean) brightening the worst, on every network.",
        "paper_setting": "VGG16, ResNet-50/101/152, codes of n=128, Paris6k, Table 3 (Sec. 5.8)",
        "paper_result": "VGG16 mAP: GeM 75.33, MAC 74.43, CroW 74.32, R-MAC 74.09, SPoC 72.53; GeM best and "
                        "SPoC worst on all four networks",
        "evidence": {"chapter_claim": [
            "Table 3: GEM brightening beats MAC brightening (n=128)",
            "Table 3: GEM brightening beats SPOC brightening (n=128)",
            "Table 3: GEM brightening beats RMAC brightening (n=128)",
            "Table 3: GEM brightening beats CROW brightening (n=128)",
            "Table 3: MAC brightening beats SPOC brightening (n=128)",
            "Table 3: RMAC brightening beats SPOC brightening (n=128)",
            "Table 3: CROW brightening beats SPOC brightening (n=128)",
        ]},
        "our_setting_differs": f"{_ACK_OURS} (the paper's GeM parameter is learned by fine-tuning); one network "
                               f"instead of four; {_DEMO} instead of Paris6k",
    },
    {
        "paper": "ACK", "chapter": "02",
        "claim": "Codes from deeper conv layers are better.",
        "paper_setting": "VGG16 pre-trained on ImageNet, its conv layers, Paris (Fig. 6 caption; the text says "
                         "Oxford), Fig. 6 (Sec. 5.6)",
        "paper_result": "see Fig. 6 (the figure is not in the text)",
        "evidence": {"chapter_claim": "Fig. 6: deeper layers give better codes"},
        "our_setting_differs": f"{_EFFNET}: taps stem, block0..block6, conv_head, GeM brightening, dosd, "
                               f"n = min(256, channels) (the narrow early taps are ranked whole); {_DEMO}",
    },
    {
        "paper": "ACK", "chapter": "02",
        "claim": "The codes' mAP decreases as the code length grows: the first few kernels carry the information.",
        "paper_setting": "ResNet-50, Holidays / Holidays101K, Sec. 5.7.1 and 5.7.3 (text, on Table 2)",
        "paper_result": "no number shows it: the paper's own Table 2 rises with n (Holidays, pre-trained: 12.33 at "
                        "n=1, 86.72 at n=256, 90.26 at n=2048; fine-tuned peaks at 87.62, n=1024); Table 1 "
                        "(Oxford5k): 64.96 at n=256, 64.27 at n=512",
        "evidence": {"chapter_claim": "Sec. 5.7.1: the codes' mAP decreases as the code length grows"},
        "our_setting_differs": f"{_ACK_OURS}; n = 1 .. 1280 (all kernels), a rank correlation over the lengths; "
                               f"{_DEMO} instead of Holidays",
    },
    # ------------------------------------------------------------------ 03 ACTNET (paper 001)
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "Each learnable activation (SinH, Exp, Weibull) before average pooling beats direct aggregation "
                 "(plain average pooling).",
        "paper_setting": "ResNeXt-101 ACTNET trained end to end (triplet loss, GLRD, 1024x768), PCAw layer; "
                         "Holidays, Oxford5k, ROxford, RParis; Fig. 5 (Sec. 4.3)",
        "paper_result": "WBA over DA: +10.5 ROxf-M, +11.3 ROxf-H, +4.9 RPar-M, +7.1 RPar-H mAP; SinHA, ExpA: see "
                        "Fig. 5 (not in the text)",
        "evidence": {"chapter_claim": [
            "Fig. 5: SinHA beats DA (with the PCAw layer)",
            "Fig. 5: ExpA beats DA (with the PCAw layer)",
            "Fig. 5: WBA beats DA (with the PCAw layer)",
        ]},
        "our_setting_differs": f"{_ACTNET_OURS}; cited: the heads with the PCAw layer (the paper's architecture); "
                               "the chapter also trains them without it (its '(without whitening)' lines)",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "The Weibull activation is the best of the three.",
        "paper_setting": "ResNeXt-101 ACTNET, PCAw layer; Holidays, Oxford5k, ROxford, RParis; Fig. 5 (Sec. 4.3, "
                         "abstract, conclusion)",
        "paper_result": "WBA above ExpA and SinHA 'on all datasets' (numbers only in Fig. 5, not in the text)",
        "evidence": {"chapter_claim": [
            "Fig. 5: WBA beats SinHA (with the PCAw layer)",
            "Fig. 5: WBA beats ExpA (with the PCAw layer)",
        ]},
        "our_setting_differs": f"{_ACTNET_OURS}; cited: the heads with the PCAw layer",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "Weibull aggregation separates matching from non-matching descriptor distances best.",
        "paper_setting": "ResNeXt-101, PCA-whitened l2-normalised descriptors, KL divergence between the "
                         "histograms of matching and non-matching Euclidean distances, Fig. 3 (Sec. 3.2; dataset "
                         "not stated)",
        "paper_result": "KL: WBA 2.44, ExpA 1.67, SinHA 1.59, ROIA (R-MAC) 1.27, DA 1.15",
        "evidence": {"chapter_claim": [
            "Fig. 3: WBA separates matching from non-matching distances better than DA",
            "Fig. 3: WBA separates matching from non-matching distances better than ROIA",
            "Fig. 3: WBA separates matching from non-matching distances better than SinHA",
            "Fig. 3: WBA separates matching from non-matching distances better than ExpA",
        ]},
        "our_setting_differs": f"{_ACTNET_OURS}; KL pools all pairs, so the paired test uses a per-query margin "
                               "(mean non-match minus mean match distance); R-MAC whitened on demo-train with the "
                               "same shrinkage",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "A larger KL separability goes with a larger retrieval accuracy.",
        "paper_setting": "ResNeXt-101, the five aggregations of Fig. 3 and their mAP in Fig. 5 (Sec. 3.2)",
        "paper_result": "'correlates strongly' (no correlation printed; KL values as in Fig. 3)",
        "evidence": {"chapter_claim": "Fig. 3: a larger KL goes with a larger mAP"},
        "our_setting_differs": f"{_ACTNET_OURS}; Spearman correlation of our five KL values with mAP_M, bootstrap "
                               "over the queries",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "Multi-layer aggregation of the last two conv blocks (MLA) beats the last block alone (SLA).",
        "paper_setting": "ResNeXt-101 ACTNET with the Weibull activation, Table 1 (Sec. 4.4)",
        "paper_result": "SLA -> MLA mAP: Holidays 94.1 -> 95.1, Oxford5k 88.9 -> 91.4, ROxf-M 68.9 -> 72.7, "
                        "ROxf-H 45.5 -> 52.2, RPar-M 78.9 -> 80.7, RPar-H 59.8 -> 62.7, MPEG 78.9 -> 82.1",
        "evidence": {"chapter_claim": "Table 1: MLA (block6+conv_head) beats SLA (conv_head) for WBA (with the PCAw layer)"},
        "our_setting_differs": f"{_ACTNET_OURS}; cited: with the PCAw layer",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "ACTNET outperforms the GeM network's global descriptor (and MAC, R-MAC).",
        "paper_setting": "ResNeXt-101 ACTNET (single scale) vs GeM [Radenović et al., ResNet101, 3 scales] and a "
                         "ResNeXt+GeM trained like ACTNET, full-dimensional descriptors, Table 3 (Fig. 6: over "
                         "dimensions)",
        "paper_result": "ROxf-M / ROxf-H mAP: ACTNET 72.7 / 52.2 vs GeM 64.7 / 38.5 and ResNeXt+GeM 64.5 / 38.9; "
                        "Oxford5k 91.4 vs 87.8 (GeM)",
        "evidence": {"rows": ("gem+whiten", "actnet"), "expected": +1},
        "our_setting_differs": f"summary rows 'actnet' at its defaults (Weibull, block6 + conv_head, PCAw layer) and "
                               f"'gem+whiten' (GeM p = 3 of conv_head, PCA-whitening learned on demo-train), neither "
                               f"network fine-tuned; {_ACTNET_OURS}",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "Learning the activations together with the CNN (end to end) gives a better descriptor than "
                 "the same head on a frozen network.",
        "paper_setting": "ResNeXt-101 ACTNET, every parameter trained by the triplet loss on GLRD (Sec. 3.4, "
                         "abstract, conclusion: 'trained jointly with the CNN filter parameters')",
        "paper_result": "no frozen baseline is printed; the claim is the paper's design",
        "evidence": {"chapter_claim": "Sec. 3.4: training the backbone's last"},
        "our_setting_differs": f"chapter 03 section 9: on a CPU EfficientNet-Lite0's last conv block only (its 1x1 "
                               f"conv head) trained with the WBA head for 4 epochs at 256 px (the whole network, "
                               f"the chapter's image size and 20 epochs on a GPU), against the frozen head trained "
                               f"the same way; {_DEMO}",
    },
    {
        "paper": "ACTNET", "chapter": "03",
        "claim": "ACTNET's compact 128-d signature beats GeM's.",
        "paper_setting": "ResNeXt-101 ACTNET, 'the top 128 values from 4096' vs GeM and R-MAC compact codes, "
                         "Table 5 (Sec. 5)",
        "paper_result": "ROxf-M+R1M 33.1, ROxf-H+R1M 14.8, RPar-M+R1M 42.3, RPar-H+R1M 17.6 (the best published)",
        "evidence": {"chapter_claim": [
            "Table 5: the compact ACTNET signature beats GeM's (top values)",
            "Table 5: the compact ACTNET signature beats GeM's (leading components)",
        ]},
        "our_setting_differs": f"two readings of 'top 128 values': each image's 128 largest values kept in place, and "
                               f"the 128 leading whitened components (at most 119 on demo-train); {_ACTNET_OURS}",
    },
    # ------------------------------------------------------------------ 04 Multi-layer (paper 002)
    {
        "paper": "Multi-layer", "chapter": "04",
        "claim": "On Oxford5k the best conv layer beats the fc layers (on Holidays and UKB the fc layers win).",
        "paper_setting": "AlexNet retrained on ILSVRC-2012, conv layers as 50K-word BoW, Oxford5k, Table 1 "
                         "(VGG16: Table 5)",
        "paper_result": "Oxford5k mAP: conv4 0.560 vs fc2 0.488, fc1 0.458 (AlexNet); VGG16: c5_1 0.570 vs "
                        "fc1 0.439",
        "evidence": {"chapter_claim": "Table 1: the best conv layer"},
        "our_setting_differs": _ML_OURS,
    },
    {
        "paper": "Multi-layer", "chapter": "04",
        "claim": "The mapping-function fusion beats direct concatenation for every fc + conv pair.",
        "paper_setting": "AlexNet, fc + conv pairs, t = 0.2, p = 0.45; Oxford5k, Holidays, UKB; Table 2 "
                         "(VGG16: Table 6)",
        "paper_result": "Oxford5k, fc2 pairs, fusion vs concatenation: conv4 0.611 vs 0.591, conv5 0.564 vs "
                        "0.527, conv3 0.562 vs 0.532; Holidays fc2+conv4 0.880 vs 0.865",
        "evidence": {"chapter_claim": [
            "Table 2: fusion beats concatenation (fc2+conv5_1",
            "Table 2: fusion beats concatenation (fc2+conv4_1",
            "Table 2: fusion beats concatenation (fc2+conv3_1",
        ]},
        "our_setting_differs": f"{_ML_OURS}; three fc + conv pairs instead of six (no fc1)",
    },
    {
        "paper": "Multi-layer", "chapter": "04",
        "claim": "The fusion of two layers beats each of its single layers.",
        "paper_setting": "AlexNet, t = 0.2, p = 0.45; Oxford5k, Holidays; Tables 1, 2 and 4 (abstract)",
        "paper_result": "Oxford5k: fc2+conv4 0.611 vs conv4 0.560 and fc2 0.488; Holidays fc2+conv4 0.880 vs fc2 "
                        "0.855; conv + conv (Table 4, Oxford5k): conv5+conv4 0.567 vs 0.560, conv4+conv3 0.563 vs "
                        "0.560, conv5+conv3 0.518 vs 0.489",
        "evidence": {"chapter_claim": [
            "Table 2: fusion of fc2+conv5_1 beats its better single layer",
            "Table 2: fusion of fc2+conv4_1 beats its better single layer",
            "Table 2: fusion of fc2+conv3_1 beats its better single layer",
            "Table 4: fusion of conv5_1+conv4_1 beats its better single layer",
            "Table 4: fusion of conv5_1+conv3_1 beats its better single layer",
            "Table 4: fusion of conv4_1+conv3_1 beats its better single layer",
        ]},
        "our_setting_differs": f"{_ML_OURS}; the better single layer of each pair is chosen by mAP on the "
                               "evaluated set",
    },
    {
        "paper": "Multi-layer", "chapter": "04",
        "claim": "With three layers, too, the fusion beats direct concatenation.",
        "paper_setting": "AlexNet, fc2 + two conv layers, t = (0.2, 0.4, 1), p = 0.45; Oxford5k, Holidays, UKB; "
                         "Table 3 (VGG16: Table 7)",
        "paper_result": "Oxford5k, fusion vs concatenation: fc2+conv5+conv4 0.612 vs 0.602, fc2+conv4+conv3 0.613 "
                        "vs 0.601, fc2+conv5+conv3 0.578 vs 0.566",
        "evidence": {"chapter_claim": [
            "Table 3: fusion beats concatenation (fc2+conv5_1+conv4_1",
            "Table 3: fusion beats concatenation (fc2+conv5_1+conv3_1",
            "Table 3: fusion beats concatenation (fc2+conv4_1+conv3_1",
        ]},
        "our_setting_differs": f"{_ML_OURS}; the top fc layer is fc2 (the only one)",
    },
    {
        "paper": "Multi-layer", "chapter": "04",
        "claim": "A third layer still improves on the best pair, though less than the second layer did.",
        "paper_setting": "AlexNet, best two-layer vs best three-layer fusion, Tables 2-3 (Sec. 5.3)",
        "paper_result": "best pair -> best triple: Oxford5k 0.611 -> 0.613, Holidays 0.880 -> 0.889, UKB 3.65 -> 3.69",
        "evidence": {"chapter_claim": "Table 3: the best three-layer fusion"},
        "our_setting_differs": f"{_ML_OURS}; best pair and triple chosen by mAP on the evaluated set",
    },
    {
        "paper": "Multi-layer", "chapter": "04",
        "claim": "An fc layer complements a conv layer more than another conv layer does.",
        "paper_setting": "AlexNet, Table 4 (two conv layers) against Table 2, Oxford5k (Sec. 5.3)",
        "paper_result": "Oxford5k: fc2+conv3 0.562 vs fc2 0.488 (+0.074), conv4+conv3 0.563 vs conv4 0.560 (+0.003)",
        "evidence": {"chapter_claim": "Table 4: an fc layer complements a conv layer more than another conv layer does"},
        "our_setting_differs": f"{_ML_OURS}; measured as the per-query gain over the better single layer, fc + conv "
                               "pairs against conv + conv pairs (the paper measures it against one layer)",
    },
    # ------------------------------------------------------------------ 05 RoI (paper 003)
    {
        "paper": "RoI", "chapter": "05",
        "claim": "Re-ranking the BoW short list with RoI features improves on the BoW first stage.",
        "paper_setting": "AlexNet (ImageNet), SURF BoW + TF-IDF inverted file, RoIs from conv5, fc7 features, fast "
                         "matching; Oxford5k, Paris6k (database images at most 500x500 px); Sec. 3.2.4, Fig. 6, "
                         "conclusion",
        "paper_result": "no number: the BoW first stage's mAP is not reported (Fig. 6 shows examples)",
        "evidence": _roi_evidence("bow"),
        "our_setting_differs": _ROI_OURS,
    },
    {
        "paper": "RoI", "chapter": "05",
        "claim": "Describing an image by its RoIs beats describing it by one whole-image feature (same first stage "
                 "and re-ranking).",
        "paper_setting": "AlexNet, fc7 (4096-d) and max/sum-pooled conv5 (256-d) features binarised by eq. 2; "
                         "Paris6k (Table 1), Oxford5k (Table 2)",
        "paper_result": "K=10 vs baseline, Paris6k / Oxford5k: fc7 85.93 vs 80.55 / 72.32 vs 65.42; max 81.63 vs "
                        "81.64 / 71.33 vs 69.21; sum 81.55 vs 77.15 / 71.99 vs 65.31",
        "evidence": _roi_evidence("baseline"),
        "our_setting_differs": _ROI_OURS,
    },
    {
        "paper": "RoI", "chapter": "05",
        "claim": "More RoIs per image (larger K) give higher accuracy.",
        "paper_setting": "AlexNet fc7 RoI features, K = 5, 10, 15, 20; Paris6k (Table 1), Oxford5k (Table 2)",
        "paper_result": "fc7, K = 5/10/15/20: Paris6k 85.04 / 85.93 / 86.78 / 86.78, Oxford5k 71.23 / 72.32 / 72.76 / "
                        "72.86 (the pooled conv5 features peak at K = 5-10)",
        "evidence": _roi_evidence("k"),
        "our_setting_differs": f"{_ROI_OURS}; K up to 15 (not 20) to bound the number of crops",
    },
    {
        "paper": "RoI", "chapter": "05",
        "claim": "fc features of the RoIs beat max- or sum-pooled conv features of the RoIs.",
        "paper_setting": "AlexNet fc7 (4096-d) vs max/sum-pooled conv5 (256-d); Paris6k (Table 1), Oxford5k (Table 2)",
        "paper_result": "K=10: fc7 85.93 vs max 81.63 / sum 81.55 (Paris6k); 72.32 vs 71.33 / 71.99 (Oxford5k)",
        "evidence": _roi_evidence("fc"),
        "our_setting_differs": f"{_ROI_OURS}; the pooled features are 1280-d (conv_head), as long as the fc ones",
    },
    {
        "paper": "RoI", "chapter": "05",
        "claim": "RoI-based CNN features outperform state-of-the-art global CNN features (best on Paris6k).",
        "paper_setting": "AlexNet fc7 RoIs (K=20) against published CNN methods, Oxford5k and Paris6k, Table 3",
        "paper_result": "Paris6k 86.78 (best) vs 84.8 (Mohedano et al., VGG16 BoW of conv features); Oxford5k 72.86 "
                        "vs 65.7 (SPoC, Babenko & Lempitsky, VGG16), but below 78.8 (Mohedano et al.)",
        "evidence": {"rows": ("spoc", "roi"), "expected": +1},
        "our_setting_differs": f"summary rows 'roi' at its defaults (fc RoI features, K = 10, N = 100, fast "
                               f"matching n = 10, k = 5, whitening to 256 dims, 224-px crops) against 'spoc' (the "
                               f"paper's Babenko & Lempitsky row: SPoC of conv_head); {_ROI_OURS}",
    },
    {
        "paper": "RoI", "chapter": "05",
        "claim": "Fast matching (exhaustive on the top n candidates, k query RoIs for the rest) cuts the matching "
                 "cost without hurting accuracy.",
        "paper_setting": "AlexNet, Sec. 3.2.4 (N, n, k not given)",
        "paper_result": "no number ('significantly reduce the computational complexity', 'will improve retrieval "
                        "accuracy')",
        "evidence": _roi_evidence("fast"),
        "our_setting_differs": f"{_ROI_OURS}; the chapter tests the weaker 'loses less than 1 mAP point' and counts "
                               "the RoI pairs compared",
    },
    # ------------------------------------------------------------------ 06 Clusters (paper 004)
    {
        "paper": "Clusters", "chapter": "06",
        "claim": "Max-pooling over activation clusters beats R-MAC's squares with the same post-processing "
                 "(queries cropped as images, crop I).",
        "paper_setting": "VGG16 (ImageNet) conv5_3, C = 4, 5 + 20 feature + 5 colour clusters, per-region l2n, "
                         "PCAw, l2n, sum; Oxford5k, Paris6k (+100k), Table 1",
        "paper_result": "mAP 70.3 vs 66.9 (R-MAC) Oxford5k, 83.6 vs 83.0 Paris6k, 65.0 vs 61.6 Oxford105k, "
                        "76.2 vs 75.7 Paris106k",
        "evidence": {"chapter_claim": "Table 1: clusters beat R-MAC (crop I)"},
        "our_setting_differs": _CL_OURS,
    },
    {
        "paper": "Clusters", "chapter": "06",
        "claim": "The clusters also beat R-MAC when the query's activations are cropped (crop X).",
        "paper_setting": "as Table 1, crop X (R-MAC crop X is the authors' implementation)",
        "paper_result": "mAP 73.8 vs 70.3 Oxford5k, 69.7 vs 65.1 Oxford105k, but 83.9 vs 84.3 Paris6k and 76.4 vs "
                        "77.6 Paris106k",
        "evidence": {"chapter_claim": "Table 1: clusters beat R-MAC (crop X)"},
        "our_setting_differs": _CL_OURS,
    },
    {
        "paper": "Clusters", "chapter": "06",
        "claim": "The clusters stay ahead of R-MAC after re-ranking and query expansion.",
        "paper_setting": "as Table 1, + spatial re-ranking (R) and query expansion (QE)",
        "paper_result": "crop I + R + QE: 81.4 vs 77.3 Oxford5k, 87.5 vs 86.5 Paris6k; crop X + R + QE: 82.5 vs "
                        "79.5, 86.8 vs 86.7",
        "evidence": {"chapter_claim": [
            "Table 1: clusters beat R-MAC (crop I + QE",
            "Table 1: clusters beat R-MAC (crop X + QE",
        ]},
        "our_setting_differs": f"{_CL_OURS}; 'R + QE' reduced to average query expansion with the top 3 (no spatial "
                               "re-ranking)",
    },
    {
        "paper": "Clusters", "chapter": "06",
        "claim": "Cropping the activations (crop X) mostly beats cropping the query image (crop I).",
        "paper_setting": "as Table 1, R-MAC and clusters, with and without R + QE",
        "paper_result": "Oxford5k: R-MAC 70.3 vs 66.9, clusters 73.8 vs 70.3; + R + QE 79.5 vs 77.3 and 82.5 vs "
                        "81.4; but clusters + R + QE on Paris6k 86.8 vs 87.5 ('in most situations')",
        "evidence": {"chapter_claim": [
            "Table 1: crop X beats crop I (R-MAC)",
            "Table 1: crop X beats crop I (R-MAC + QE",
            "Table 1: crop X beats crop I (Ours (clusters))",
            "Table 1: crop X beats crop I (Ours (clusters) + QE",
        ]},
        "our_setting_differs": f"{_CL_OURS}; QE is average query expansion with the top 3",
    },
    {
        "paper": "Clusters", "chapter": "06",
        "claim": "Feature clusters are much more precise regions (share of their area inside the query's box) than "
                 "R-MAC's squares.",
        "paper_setting": "VGG16, Oxford5k and Paris6k queries with their boxes, about 20 R-MAC regions vs 5 + 15 "
                         "clusters per image, eq. 1, Fig. 4 (Sec. 3.2)",
        "paper_result": "see Fig. 4 (curves only; the figure is not in the text)",
        "evidence": {"chapter_claim": "Fig. 4: feature clusters are more precise regions than R-MAC squares"},
        "our_setting_differs": f"{_CL_OURS}; the paired test compares the mean precision per query (the figure's "
                               "curves are drawn too), with the method's 5 + 20 clusters instead of 5 + 15",
    },
    {
        "paper": "Clusters", "chapter": "06",
        "claim": "A few PCA dimensions are enough for the clustering: more dimensions often make retrieval worse.",
        "paper_setting": "VGG16 conv5_3 (ImageNet), mAP over C, Fig. 3 (Sec. 3.1); C = 4 chosen (ResNet101: 7)",
        "paper_result": "see Fig. 3 (the figure is not in the text)",
        "evidence": {"chapter_claim": "Fig. 3: mAP falls as C grows beyond a small C"},
        "our_setting_differs": f"{_CL_OURS}; C swept over 2, 8, 32 on demo-train (60 queries of 12 objects), never "
                               "on the evaluated set",
    },
]

# ------------------------------------------------------------------------------------------------
# The README's claims table.
# ------------------------------------------------------------------------------------------------

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
_CLAIM_KEYS = ("chapter", "claim", "verdict", "evidence")


class LedgerError(ValueError):
    """A claim of :data:`PAPER_CLAIMS` does not fit the evidence it refers to (a claim prefix that no
    line, or several lines, of the README's claims table start with; a missing summary comparison),
    or a malformed claims table."""


def parse_claims_table(markdown_text: str) -> list[dict]:
    """The rows of the README's claims table as dicts with keys chapter, claim, verdict, evidence.

    ``markdown_text`` is the whole README (the table between ``<!-- claims:begin -->`` and
    ``<!-- claims:end -->`` is read) or the table alone. The header row and the separator row are
    skipped; a row with other than four cells raises :class:`LedgerError`. (``scripts/claims_table.py``
    writes "|" inside a claim as "/", so the cells split on "|".)
    """
    text = markdown_text
    if BEGIN in text or END in text:
        if not (BEGIN in text and END in text) or text.index(BEGIN) > text.index(END):
            raise LedgerError(f"the claims table needs both {BEGIN} and {END}, in that order")
        text = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows, header_seen = [], False
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line.startswith("|"):
            continue
        if _SEPARATOR.match(line):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 4:
            raise LedgerError(f"claims table line {number} has {len(cells)} cells, not 4: {line!r}")
        if not header_seen and cells[0].lower() == "chapter":
            header_seen = True
            continue
        rows.append(dict(zip(_CLAIM_KEYS, cells)))
    return rows


def readme_claims(readme: str | Path | None = None) -> list[dict]:
    """:func:`parse_claims_table` of the repository's README.md (or of ``readme``)."""
    path = Path(readme) if readme is not None else Path(__file__).resolve().parent.parent / "README.md"
    return parse_claims_table(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Checks and the ledger.
# ------------------------------------------------------------------------------------------------

def _prefixes(evidence: Mapping) -> list[str]:
    prefixes = evidence["chapter_claim"]
    return [prefixes] if isinstance(prefixes, str) else list(prefixes)


def validate_claims(claims: Sequence[Mapping] = None) -> None:
    """Check the structure of ``claims`` (default :data:`PAPER_CLAIMS`): keys, paper and chapter, one
    evidence form with valid contents (row labels among :data:`ROW_LABELS`, ``expected`` +1 or -1,
    non-empty prefixes). Raises :class:`LedgerError` naming the claim."""
    claims = PAPER_CLAIMS if claims is None else claims
    keys = {"paper", "chapter", "claim", "paper_setting", "paper_result", "evidence", "our_setting_differs"}
    for i, c in enumerate(claims):
        where = f"claim {i} ({c.get('paper')}: {str(c.get('claim'))[:60]!r})"
        if set(c) != keys:
            raise LedgerError(f"{where}: keys {sorted(c)}, expected {sorted(keys)}")
        if PAPERS.get(c["paper"]) != c["chapter"]:
            raise LedgerError(f"{where}: paper {c['paper']!r} with chapter {c['chapter']!r}; papers: {PAPERS}")
        for key in keys - {"evidence"}:
            if not isinstance(c[key], str) or not c[key].strip():
                raise LedgerError(f"{where}: {key} must be a non-empty string")
        ev = c["evidence"]
        forms = [f for f in ("rows", "chapter_claim", "none") if f in ev]
        if len(forms) != 1:
            raise LedgerError(f"{where}: evidence needs exactly one of rows / chapter_claim / none, got {sorted(ev)}")
        form = forms[0]
        if form == "rows":
            if set(ev) != {"rows", "expected"}:
                raise LedgerError(f"{where}: rows evidence takes 'rows' and 'expected', got {sorted(ev)}")
            rows = ev["rows"]
            if len(rows) != 2 or rows[0] == rows[1] or any(r not in ROW_LABELS for r in rows):
                raise LedgerError(f"{where}: rows {rows!r} must be two different labels of {ROW_LABELS}")
            if ev["expected"] not in (1, -1) or isinstance(ev["expected"], bool):
                raise LedgerError(f"{where}: expected must be +1 or -1, got {ev['expected']!r}")
        elif form == "chapter_claim":
            if set(ev) != {"chapter_claim"}:
                raise LedgerError(f"{where}: chapter_claim evidence takes no other key, got {sorted(ev)}")
            prefixes = _prefixes(ev)
            if not prefixes or any(not isinstance(p, str) or not p.strip() for p in prefixes):
                raise LedgerError(f"{where}: chapter_claim needs non-empty prefixes, got {ev['chapter_claim']!r}")
            if len(set(prefixes)) != len(prefixes):
                raise LedgerError(f"{where}: repeated chapter_claim prefixes")
        elif not isinstance(ev["none"], str) or not ev["none"].strip() or set(ev) != {"none"}:
            raise LedgerError(f"{where}: none evidence takes one non-empty reason")


def find_claim_line(claims_table: Sequence[Mapping], chapter: str, prefix: str) -> Mapping:
    """The one line of chapter ``chapter`` whose claim text starts with ``prefix``; :class:`LedgerError`
    when none or several do."""
    hits = [row for row in claims_table if row["chapter"] == chapter and row["claim"].startswith(prefix)]
    if len(hits) != 1:
        what = "no line" if not hits else f"{len(hits)} lines"
        raise LedgerError(f"chapter {chapter}: {what} of the claims table start with {prefix!r}"
                          + ("; the chapter's claim lines changed: update helpers/papers.py" if not hits else
                             f": {[h['claim'] for h in hits]}"))
    return hits[0]


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict for several claim lines behind one headline claim.

    ``"reproduced"`` only if every line is; ``"contradicted"`` if any line is (even when others are
    reproduced); ``"not separable on this data"`` if every line is; otherwise (some reproduced, the
    rest not separable) ``"mixed"``. A single verdict is returned as it is.
    """
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("no verdicts to combine")
    unknown = sorted(set(verdicts) - set(VERDICTS))
    if unknown:
        raise ValueError(f"unknown verdicts {unknown}; expected {VERDICTS}")
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if all(v == NOT_SEPARABLE for v in verdicts):
        return NOT_SEPARABLE
    return MIXED


def ledger_rows(claims_table: Sequence[Mapping], summary_comparisons: Mapping | None = None,
                claims: Sequence[Mapping] | None = None) -> list[dict]:
    """The reproduction ledger: one dict per claim of ``claims`` (default :data:`PAPER_CLAIMS`) with the
    columns :data:`LEDGER_COLUMNS` (paper, claim, paper setting, paper result, our setting, our
    evidence, verdict).

    ``claims_table`` is the README's claims table parsed by :func:`parse_claims_table`.
    ``summary_comparisons`` maps a pair of row labels ``(a, b)`` to ``(verdict, evidence string)``,
    the summary chapter's paired comparison of row b against row a made with the claim's direction.

    Verdicts: a ``chapter_claim`` with one prefix takes that line's verdict; with several prefixes the
    verdicts are combined by :func:`combine_verdicts` ("reproduced" only if all lines are,
    "contradicted" if any is, "not separable on this data" if all are, otherwise "mixed"), and the
    evidence lists every line. ``rows`` evidence takes the summary comparison's verdict, or
    :data:`NOT_EVALUATED` when ``summary_comparisons`` is None. ``none`` gives :data:`NOT_TESTED`.

    Raises :class:`LedgerError` when a prefix matches no line (or several) of its chapter, or when
    ``summary_comparisons`` is given but lacks a pair that a claim needs.
    """
    claims = PAPER_CLAIMS if claims is None else claims
    validate_claims(claims)
    ledger = []
    for c in claims:
        ev = c["evidence"]
        if "chapter_claim" in ev:
            lines = [find_claim_line(claims_table, c["chapter"], p) for p in _prefixes(ev)]
            verdict = combine_verdicts([line["verdict"] for line in lines])
            evidence = "; ".join(f"ch. {c['chapter']} '{line['claim']}': {line['verdict']} ({line['evidence']})"
                                 for line in lines)
        elif "rows" in ev:
            a, b = ev["rows"]
            relation = "beats" if ev["expected"] > 0 else "is below"
            if summary_comparisons is None:
                verdict, evidence = NOT_EVALUATED, f"summary table: {b} {relation} {a} (not evaluated)"
            else:
                pair = (a, b)
                if pair not in summary_comparisons:
                    raise LedgerError(f"{c['paper']}: the summary comparisons lack the pair {pair!r} "
                                      f"({b} {relation} {a}); they have {sorted(summary_comparisons)}")
                verdict, detail = summary_comparisons[pair]
                if verdict not in VERDICTS:
                    raise LedgerError(f"summary comparison {pair!r}: unknown verdict {verdict!r}; expected {VERDICTS}")
                evidence = f"summary table: {b} {relation} {a}: {verdict} ({detail})"
        else:
            verdict, evidence = NOT_TESTED, ev["none"]
        ledger.append(dict(zip(LEDGER_COLUMNS, (c["paper"], c["claim"], c["paper_setting"], c["paper_result"],
                                                c["our_setting_differs"], evidence, verdict))))
    return ledger


def ledger_markdown(rows: Sequence[Mapping], columns: Sequence[str] = LEDGER_COLUMNS) -> str:
    """The ledger as a markdown table ("|" inside a cell written as "/")."""
    def cell(value) -> str:
        return str(value).replace("|", "/").replace("\n", " ")

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(row[col]) for col in columns) + " |" for row in rows]
    return "\n".join(out)
