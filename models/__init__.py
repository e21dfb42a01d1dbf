"""Models for LST: `load_model(name, dataset)` -> (model on [0,1] images, DataConfig).

The registry (names, weights, caches) is `models.registry`; a user's own TorchScript file or
`package.module:callable` factory is `models.files`; the project's own architectures are
`models.architectures`, and `python -m models.train` trains them.
"""
from .files import ModelError, model_file_digest, model_kind, model_name, num_outputs
from .registry import (OWN_MODELS, ROBUSTBENCH_MODELS, TIMM_MODELS, WEIGHTS_DIR, home_dataset,
                       import_robustbench, known_models, load_model, load_own_weights,
                       local_weights_file, lst_home, own_weights_path, robustbench_checkpoint_path)

__all__ = ["OWN_MODELS", "ROBUSTBENCH_MODELS", "TIMM_MODELS", "WEIGHTS_DIR", "ModelError",
           "home_dataset", "import_robustbench", "known_models", "load_model", "load_own_weights",
           "local_weights_file", "lst_home", "model_file_digest", "model_kind", "model_name",
           "num_outputs", "own_weights_path", "robustbench_checkpoint_path"]
