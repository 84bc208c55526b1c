"""Training on a published dataset version: registration, launch, and a GPU-free dataset check.

The ``labelloop_train`` DAG (scheduled on the dataset asset) calls
:func:`prepare_registration` (materialize the version locally, write qwen-vl-finetune's
``data_dict`` entry and ``--dataset_use``) and :func:`launch_training` (run the configured
launcher, record a ``training_runs`` row with its outcome).

Launcher values (``LABELLOOP_TRAINING__LAUNCHER``):

* ``subprocess`` with ``LABELLOOP_TRAINING__COMMAND``. Default (no GPU):
  ``python -m labelloop.training.check_dataset {annotation_path} {data_path}``. Production::

    torchrun --nproc_per_node=8 --master_port=29500 -m labelloop.training.qwen_entry
      --registration {registration} --qwen-root /opt/Qwen3-VL/qwen-vl-finetune --
      --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --dataset_use {dataset_use}
      --data_flatten True --tune_mm_vision False --tune_mm_mlp True --tune_mm_llm True --bf16
      --min_pixels {min_pixels} --max_pixels {max_pixels} --model_max_length 8192
      --output_dir {output_dir} --num_train_epochs 1 --per_device_train_batch_size 4
      --gradient_accumulation_steps 4 --learning_rate 2e-7 --gradient_checkpointing True
      --deepspeed /opt/Qwen3-VL/qwen-vl-finetune/scripts/zero3.json

  (``--min_pixels``/``--max_pixels`` must be the export's: Qwen2.5-VL boxes are pixels of the
  resized image. The checkpoint path must contain "qwen2.5" for the trainer to pick the class.)
* ``http``: POST the registration to ``LABELLOOP_TRAINING__WEBHOOK_URL``.
* ``kubernetes``: start the trainer image with ``KubernetesPodOperator`` in the DAG instead
  (labelloop does not create pods); pass it ``registration.json``.
"""

from labelloop.training.launch import LaunchError, LaunchResult, launch_training, render_command
from labelloop.training.registration import Registration, prepare_registration

__all__ = [
    "LaunchError",
    "LaunchResult",
    "Registration",
    "launch_training",
    "prepare_registration",
    "render_command",
]
