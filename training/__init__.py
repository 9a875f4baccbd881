"""Training: config, schedule, EMA, logging, process group, RNG states and stop signals for train_ddp.py."""
