r"""The main job, ``normlab demo``: the papers' central measurements on white noise, checked.

On no data at all (white-noise inputs, the convention of Beyond BatchNorm and of signal
propagation plots) it reproduces, at initialisation:

1. the PN paper's Figure 2 (top row): the power decomposition P = P1 + P2 + P3 + P4 of the
   normalized pre-activations through the random net of Definition 1, for bn, ln, in, gn8,
   ln+pn, gn8+pn and ln+ws, with Theorem 1's bound on the LN panel;
2. signal propagation plots (Brock et al. 2021; Hoedt et al. 2022) of a BN ResNet-50 v2 and of
   an NF-ResNet-50, and Hoedt et al.'s Figures 4 and 5 (left): a ResNet-50 v2 without
   normalization (its variance explodes exponentially) against BN's, and an NF-ResNet-50 with
   plain He-initialised convs (large squared mean, unsteady residual branches) against scaled WS;
3. Beyond BatchNorm's Claims 1-2: the variance of a ResNet-56's residual stream grows linearly
   with depth under bn, ln, in, gn8, exponentially under weight normalization and scaled WS,
   and not at all under those with SkipInit;
4. Beyond BatchNorm's Figure 6a: stable rank of a 30-layer, width-64 CNN's features against
   sqrt(width / group size);
5. Beyond BatchNorm's Figure 8: gradient norm through depth for IN, BN, GN, LN (and the cosine
   similarity of the features through depth);
6. the input of Beyond BatchNorm's Figure 5: the cosine similarity of CNN-10's and ResNet-56's
   penultimate features per normalizer (LN's above GN's above IN's, BN's below every group
   normalizer's, PN's far below LN's and GN's);
7. PN's guarantee, Theorem 3, for every registered φ;

and writes ``report.html`` (figures and a table of checks: claim, measured value, expectation,
pass/fail), the figures, and ``metrics.json`` (top-level ``"checks"`` beside each analysis' data).

Each analysis is a module of this package: ``power`` (1), ``signal`` (2), ``variance`` (3),
``rank`` (4), ``gradients`` (5), ``similarity`` (6), ``guarantee`` (7); ``config`` holds
:class:`DemoConfig`, :class:`Analysis` and the shared helpers, ``fits`` the growth fits of 2
and 3, and ``run`` :data:`ANALYSES` and :func:`run_demo`.
"""

from .config import Analysis, DemoConfig, white_noise
from .fits import DepthGrowth, StageFit, depth_growth, stage_fit, stage_labels
from .gradients import GRADIENT_SCHEMES, analyze_gradients
from .guarantee import THEOREM3_Z, analyze_pn_guarantee
from .power import FIG2_SCHEMES, THEOREM1_TOLERANCE, THEOREM2_TOLERANCE, analyze_power
from .rank import GROUP_SIZES, analyze_stable_rank
from .run import ANALYSES, DESCRIPTION, run_demo
from .signal import (
    SPP_EXPLOSION_OVER_BN,
    SPP_EXPONENTIAL_R2,
    SPP_GROWTH_PER_BLOCK,
    SPP_LINEAR_R2,
    SPP_MEAN_OVER_BN,
    SPP_MEAN_OVER_NF,
    SPP_MODELS,
    SPP_STEADY,
    SPP_TRACKING,
    SPP_UNSTEADY_OVER_NF,
    analyze_signal_propagation,
    block_squared_mean,
    branch_variation,
    plain_nf_resnet_checks,
    unnormalized_resnet_checks,
)
from .similarity import (
    BN_GAP,
    GROUP_GAP,
    GROUP_NORMALIZERS,
    GROUP_ORDER,
    PN_GAP,
    PN_PAIRS,
    SIMILARITY_MODELS,
    SIMILARITY_SCHEMES,
    analyze_feature_similarity,
    penultimate_similarity,
    similarity_checks,
    similarity_gaps,
)
from .variance import (
    ACTIVATION_NORMALIZERS,
    EXPLOSION,
    EXPONENTIAL_EDGE,
    EXPONENTIAL_R2,
    FLAT_STAGE,
    LINEAR_R2,
    MODERATE_GROWTH,
    PARAMETRIC_NORMALIZERS,
    RESNET56,
    SKIPINIT,
    analyze_variance_growth,
    bounded_growth_checks,
    exponential_growth_checks,
    linear_growth_checks,
    residual_stream_variance,
)

__all__ = [
    "ACTIVATION_NORMALIZERS",
    "ANALYSES",
    "BN_GAP",
    "DESCRIPTION",
    "EXPLOSION",
    "EXPONENTIAL_EDGE",
    "EXPONENTIAL_R2",
    "FIG2_SCHEMES",
    "FLAT_STAGE",
    "GRADIENT_SCHEMES",
    "GROUP_GAP",
    "GROUP_NORMALIZERS",
    "GROUP_ORDER",
    "GROUP_SIZES",
    "LINEAR_R2",
    "MODERATE_GROWTH",
    "PARAMETRIC_NORMALIZERS",
    "PN_GAP",
    "PN_PAIRS",
    "RESNET56",
    "SIMILARITY_MODELS",
    "SIMILARITY_SCHEMES",
    "SKIPINIT",
    "SPP_EXPLOSION_OVER_BN",
    "SPP_EXPONENTIAL_R2",
    "SPP_GROWTH_PER_BLOCK",
    "SPP_LINEAR_R2",
    "SPP_MEAN_OVER_BN",
    "SPP_MEAN_OVER_NF",
    "SPP_MODELS",
    "SPP_STEADY",
    "SPP_TRACKING",
    "SPP_UNSTEADY_OVER_NF",
    "THEOREM1_TOLERANCE",
    "THEOREM2_TOLERANCE",
    "THEOREM3_Z",
    "Analysis",
    "DemoConfig",
    "DepthGrowth",
    "StageFit",
    "analyze_feature_similarity",
    "analyze_gradients",
    "analyze_pn_guarantee",
    "analyze_power",
    "analyze_signal_propagation",
    "analyze_stable_rank",
    "analyze_variance_growth",
    "block_squared_mean",
    "bounded_growth_checks",
    "branch_variation",
    "depth_growth",
    "exponential_growth_checks",
    "linear_growth_checks",
    "penultimate_similarity",
    "plain_nf_resnet_checks",
    "residual_stream_variance",
    "run_demo",
    "similarity_checks",
    "similarity_gaps",
    "stage_fit",
    "stage_labels",
    "unnormalized_resnet_checks",
    "white_noise",
]
