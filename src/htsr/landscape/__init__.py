"""Loss-landscape toolkit: Hessian spectra (power iteration, Lanczos, Hutchinson, Hutch++, SLQ), 1-D/2-D loss
surfaces along filter-normalised directions, linear and Bezier mode connectivity, and (in sibling modules)
CKA, sharpness and SAM. Everything evaluates an :class:`~htsr.landscape.objective.Objective`
(model + loss + data). Importing this package is cheap: submodules (and torch) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_WHERE = {
    "Objective": "objective", "LandscapeError": "objective", "NonFiniteLossError": "objective",
    "reestimate_bn": "objective", "check_same_architecture": "objective", "as_model_loss": "objective",
    "CriterionLoss": "objective", "forward_batch": "objective", "model_output_tensor": "objective",
    "top_eigenvalues": "hessian", "hessian_trace": "hessian", "spectral_density": "hessian",
    "hessian_summary": "hessian", "EigenResult": "hessian", "TraceResult": "hessian", "DensityResult": "hessian",
    "random_direction": "directions", "model_direction": "directions", "plane_through": "directions",
    "surface_1d": "surfaces", "surface_2d": "surfaces", "random_surface_1d": "surfaces",
    "random_surface_2d": "surfaces", "line_between": "surfaces", "plane_between": "surfaces",
    "Surface1D": "surfaces", "Surface2D": "surfaces",
    "linear_path": "paths", "train_bezier": "paths", "evaluate_curve": "paths", "BezierCurve": "paths",
    "PathResult": "paths", "mode_connectivity": "paths", "mode_connectivity_peak": "paths",
    "linear_cka": "cka", "hsic1": "cka", "MinibatchCKA": "cka", "compare_models": "cka", "output_cka": "cka",
    "SAM": "sam", "ASAM": "sam", "SAMStateError": "sam", "frozen_norm_stats": "sam",
    "worst_case_sharpness": "sharpness", "sharpness_table": "sharpness", "average_sharpness": "sharpness",
    "SharpnessResult": "sharpness", "per_sample_grad_norms": "persample",
    "disagreement": "diversity", "disagreement_matrix": "diversity", "disagreement_error_ratio": "diversity",
    "prediction_variance": "diversity", "ensemble_metrics": "diversity", "collect_outputs": "diversity",
    "kl_matrix": "diversity", "mean_pairwise_kl": "diversity",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
