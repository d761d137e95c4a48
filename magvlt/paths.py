"""File names inside the directories magvlt writes and reads: a training run, a VQ-GAN, a contrastive scorer.

run/config.json          TrainConfig (a VQ-GAN's or scorer's directory: its own config)
run/model.safetensors    weights
run/train_state.pt       step, optimizer, data position, elapsed time (training runs only)
run/scheduler.json       the decoding preset the run samples with by default (optional)
run/text/, run/vq/       the tokenizers the run was trained with
run/scorer/              a contrastive reranker the pipeline loads with the run (optional)
run/metrics.jsonl, run/loss.png   the training log and its plot
"""

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
SCHEDULER = "scheduler.json"
TEXT_DIR = "text"
VQ_DIR = "vq"
SCORER_DIR = "scorer"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
