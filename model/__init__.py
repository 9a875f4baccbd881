"""IMHN (stacked multi-scale hourglasses), its focal L2 multi-scale loss, and checkpoints.

    model/config.py      ModelConfig, LossConfig (defaults = the paper's)
    model/blocks.py      residual / SE / stem / hourglass blocks
    model/imhn.py        IMHN: forward (every stack and scale) and predict (the inference graph)
    model/loss.py        multiscale_loss
    model/checkpoint.py  save_checkpoint, load_checkpoint, load_model
"""
