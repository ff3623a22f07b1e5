"""Training and evaluation entry points over Detectron2's trainers (`tools/train_net.py` is a
thin wrapper of `run`)."""
from .autocast import TrainingAutocast  # noqa: F401
from .process_group import leave_process_group  # noqa: F401
from .trainer import Trainer  # noqa: F401
from .checkpoint import (  # noqa: F401
    CheckedCheckpointer,
    CheckpointError,
    WeightsMismatchError,
    check_loaded_weights,
)
from .checks import LOSS_CHOICES, ConfigError  # noqa: F401
from .hooks import StopWithoutPositives  # noqa: F401
from .launch import (  # noqa: F401
    SETUP_ERRORS,
    argument_parser,
    build_cfg,
    check_before_launch,
    eval_only_command,
    images_per_process_warning,
    load_config,
    main,
    register_datasets,
    run,
    setup,
    train_or_evaluate,
)
