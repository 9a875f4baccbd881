"""The pieces of training, without a process group: config, schedule, EMA, RNG states, data wait."""
import io
import random
import sys
import time

import numpy as np
import pytest
import torch

from core.errors import UserError
from tests.conftest import ROOT
from training.config import OptimConfig, load_train_config
from training.distributed import fingerprint
from training.ema import EMA
from training.log import BusySampler, IntervalMeter, gpu_busy_sampler
from training.optim import build_optimizer, learning_rate
from training.rng import rng_state, set_rng_state


def test_paper_config_has_the_originals_training_constants():
    cfg = load_train_config(ROOT / "configs" / "imhn512.yaml")
    o = cfg.optim
    assert (o.name, o.lr_per_process, o.momentum, o.weight_decay) == ("sgd", 2.5e-5, 0.9, 5e-4)
    assert (o.warmup_epochs, o.decay_every_epochs, o.decay_factor) == (3, 15, 0.2)
    assert cfg.pipeline.input_size == 512 and cfg.pipeline.batch_size == 4 and cfg.model.num_stacks == 4
    assert (cfg.resolve_amp("cuda"), cfg.resolve_amp("cpu")) == ("bf16", "fp32")


def test_tiny_config_matches_the_tiny_model_file():
    from core.config import from_dict, load_yaml
    from model.config import ModelConfig
    tiny = load_train_config(ROOT / "configs" / "tiny.yaml")
    assert tiny.model == from_dict(ModelConfig, load_yaml(ROOT / "configs" / "model" / "tiny.yaml"))
    assert tiny.skeleton_path().is_file()


def test_unknown_or_bad_keys_are_user_errors(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"optim.*learning_rate"):
        load_train_config(path)
    path.write_text("amp: fp8\n")
    with pytest.raises(UserError, match="amp"):
        load_train_config(path)
    path.write_text("{}\n")
    with pytest.raises(UserError, match="max_steps"):
        load_train_config(path, max_steps=-1)


def test_schedule_warms_up_scales_with_world_size_and_decays():
    cfg = OptimConfig(lr_per_process=1e-3, warmup_epochs=2, decay_every_epochs=5, decay_factor=0.1)
    spe = 10  # steps per epoch
    lr = [learning_rate(s, spe, cfg, world_size=4) for s in range(120)]
    assert lr[0] == pytest.approx(4e-3 / 20)              # first of 20 warm-up steps
    assert lr[9] == pytest.approx(4e-3 * 10 / 20)         # linear
    assert lr[19] == lr[49] == pytest.approx(4e-3)        # full rate until epoch 5
    assert lr[50] == pytest.approx(4e-4) and lr[99] == pytest.approx(4e-4)
    assert lr[100] == pytest.approx(4e-5)
    assert all(a <= b for a, b in zip(lr[:20], lr[1:20]))
    no_warmup = OptimConfig(warmup_epochs=0)
    assert learning_rate(0, spe, no_warmup, 1) == no_warmup.lr_per_process


def test_optimizers_take_every_parameter_with_the_configured_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sgd = build_optimizer(model, OptimConfig())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert sgd.defaults["weight_decay"] == 5e-4 and len(sgd.param_groups[0]["params"]) == 4
    adamw = build_optimizer(model, OptimConfig(name="adamw", momentum=0.8, beta2=0.99))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)


def test_ema_is_the_average_of_the_weights_and_copies_counters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    w0 = model[0].weight.detach().clone()
    expected = w0.clone()
    for n in range(30):
        with torch.no_grad():
            model[0].weight.add_(1.0)  # an in-place update, as an optimizer step
        model.train()(torch.randn(4, 3))  # batch norm: running stats and its step counter move
        ema.update()
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model[0].weight.detach()
    assert torch.allclose(ema.shadow["0.weight"], expected, atol=1e-5)
    assert not torch.allclose(ema.shadow["0.weight"], model[0].weight)  # it lags behind the live weights
    assert ema.shadow["1.num_batches_tracked"] == 30
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 30 and torch.equal(restored.shadow["0.weight"], ema.shadow["0.weight"])


def test_rng_states_survive_a_weights_only_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached Gaussians behind
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    def draw():
        return random.random(), random.gauss(0, 1), np.random.standard_normal(2).tolist(), torch.rand(2).tolist()

    first = draw()
    set_rng_state(state)
    assert draw() == first


def test_data_wait_counts_only_the_time_blocked_on_the_next_batch():
    def slow_loader():
        for i in range(3):
            time.sleep(0.05)  # the loader is slow
            yield i

    meter = IntervalMeter()
    for _ in meter.timed(slow_loader()):
        time.sleep(0.02)  # the step itself
        meter.add(torch.ones(2), ok=True)
    wall, wait, steps, sums, good = meter.flush()
    assert steps == good == 3 and torch.equal(sums, torch.full((2,), 3.0))
    # sleeps last at least as long as asked: lower bounds only, whatever the machine's load
    assert wait >= 0.15 and wall - wait >= 0.06


def test_validation_time_counts_neither_as_step_time_nor_as_data_wait():
    meter = IntervalMeter()
    for i in meter.timed(range(2)):
        time.sleep(0.02)  # the step
        meter.add(torch.ones(1), ok=True)
        if i == 0:  # validation, as train_ddp.fit runs it between steps
            start = time.perf_counter()
            time.sleep(0.3)
            meter.exclude(time.perf_counter() - start)
    wall, wait, steps, _, _ = meter.flush()
    assert steps == 2 and wait < 0.05 and wall < 0.25  # two 20 ms steps, not 300 ms of validation


def test_fingerprint_tells_equal_weights_from_different_ones():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    assert torch.equal(fingerprint(a), fingerprint(b))
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1e-6  # one weight, by about one float32 step
    assert not torch.equal(fingerprint(a), fingerprint(b))


def test_busy_sampler_averages_the_numbers_its_command_prints():
    # as nvidia-smi --format=csv,noheader,nounits -lms prints them; a stray line is skipped
    sampler = BusySampler([sys.executable, "-c", "print(90); print('No devices were found'); print(100)"])
    sampler.close(wait=30)  # lets the command finish, then waits for the reader
    assert sampler.take() == 95.0
    assert sampler.take() is None  # nothing new since
    assert gpu_busy_sampler(torch.device("cpu")) is None
