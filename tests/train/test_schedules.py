"""Training schedules and minibatches shared by the models (training plan, data splitter)."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

from scgexp.data import InputError, simulate_multiome, simulate_scatac, simulate_scrna
from scgexp.model import SAILER, MultiVAE, ZINBAutoencoder
from scgexp.train import TrainingDivergedError


class _RecordKLWeight(Callback):
    def __init__(self):
        self.weights: list[float] = []
        self.invariance_factors: list[float] = []
        self.learning_rates: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(pl_module.loss_kwargs["kl_weight"])  # what this minibatch used
        self.invariance_factors.append(pl_module.invariance_factor)

    def on_train_epoch_start(self, trainer, pl_module):
        self.learning_rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("invariance", "kl_cycle_epochs", "ramp"),
    [
        ("mi", None, "epochs"),
        ("both", None, "epochs"),
        ("mi", 2, "epochs"),
        ("both", None, "steps"),
    ],
)
def test_kl_weight_ramps_or_cycles_by_minibatch_and_the_learning_rate_decays(
    invariance, kl_cycle_epochs, ramp
):
    """200 cells, 180 for training in 4 minibatches of 50: KL weight 0 in the warm-up epoch,
    then a straight ramp over two epochs (or scvi-tools' n_steps_kl_warmup of 8 minibatches),
    whatever the number of optimisers; cyclical: a ramp over the first half of every 2-epoch
    cycle, then full. The learning rate decays by lr_decay once per epoch."""
    adata = simulate_scatac(n_cells=200, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=32, n_latent=4, invariance=invariance)
    recorder = _RecordKLWeight()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=4,
            batch_size=50,
            n_epochs_warmup=1,
            n_epochs_kl_warmup=2 if ramp == "epochs" else None,
            early_stopping=False,
            enable_progress_bar=False,
            callbacks=[recorder],
            plan_kwargs={
                "kl_cycle_epochs": kl_cycle_epochs,
                "lr": 1e-3,
                "lr_decay": 0.5,
                "n_steps_kl_warmup": 8 if ramp == "steps" else None,
            },
        )
    progress = np.arange(16) / 4 - 1  # epochs after the warm-up, by minibatch
    if kl_cycle_epochs is None:
        expected = np.minimum(np.maximum(progress / 2, 0), 1)
    else:
        expected = np.where(progress < 0, 0, np.minimum(progress % 2, 1))
    np.testing.assert_allclose(recorder.weights, expected)
    np.testing.assert_array_equal(recorder.invariance_factors, progress >= 0)  # off in warm-up
    np.testing.assert_allclose(recorder.learning_rates, 1e-3 * 0.5 ** np.arange(4))


def test_a_one_cell_last_minibatch_is_dropped_not_trained():
    """Batch normalisation cannot train on one cell; 143 cells give 129 training cells."""
    atac = simulate_scatac(n_cells=143, n_peaks=200, seed=1)
    SAILER.setup_anndata(atac, batch_key="batch")
    sailer = SAILER(atac, n_hidden=32, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nor a warning that asks the user to act
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
        sailer.train(
            max_epochs=2, enable_progress_bar=False, n_epochs_warmup=0, n_epochs_kl_warmup=1
        )
    assert np.isfinite(sailer.get_latent_representation()).all()

    mdata = simulate_multiome(n_cells=143, n_genes=40, n_peaks=80, seed=1)
    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    multivae = MultiVAE(mdata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multivae.train(max_epochs=2, enable_progress_bar=False, data_mode="standard")
    assert np.isfinite(multivae.get_latent_representation()).all()


def _train_quietly(model, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(enable_progress_bar=False, **kwargs)


def _models():
    from scgexp.data import simulate_bulk_expression, simulate_scrna
    from scgexp.model import DGEX, ZINBAutoencoder

    counts = simulate_scrna(n_cells=150, n_genes=40, seed=0)
    ZINBAutoencoder.setup_anndata(counts, layer="counts", batch_key="batch")
    bulk = simulate_bulk_expression(n_samples=150, n_landmarks=10, n_targets=20, seed=0)
    DGEX.setup_anndata(bulk)
    atac = simulate_scatac(n_cells=150, n_peaks=100, seed=0)
    SAILER.setup_anndata(atac, batch_key="batch")
    mdata = simulate_multiome(n_cells=150, n_genes=40, n_peaks=80, seed=0)
    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    return {
        "zinb": lambda: ZINBAutoencoder(counts, n_hidden=16, n_latent=4),
        "dgex": lambda: DGEX(bulk, n_hidden=16),
        "sailer": lambda: SAILER(atac, n_hidden=16, n_latent=4),
        "multivae": lambda: MultiVAE(mdata, n_hidden=16, n_latent=4),
    }


@pytest.mark.parametrize("name", ["zinb", "dgex", "sailer", "multivae"])
def test_the_users_callbacks_list_is_left_alone_and_none_means_none(name):
    from lightning.pytorch.callbacks import Callback

    model = _models()[name]()
    callbacks = [Callback()]
    for _ in range(2):  # scvi-tools' Trainer appended its early stopping to the user's list
        model.train(max_epochs=1, callbacks=callbacks, enable_progress_bar=False)
        assert len(callbacks) == 1
    for early_stopping in (True, False):
        model.train(
            max_epochs=1, callbacks=None, early_stopping=early_stopping, enable_progress_bar=False
        )


def test_dgex_max_epochs_none_is_its_own_default_not_scvi_tools_heuristic():
    model = _models()["dgex"]()
    _train_quietly(model, max_epochs=None, limit_train_batches=1, limit_val_batches=1)
    assert model.trainer.max_epochs == 200  # scvi-tools' heuristic: 400 for 150 samples


@pytest.mark.parametrize("name", ["zinb", "dgex", "sailer", "multivae"])
def test_train_size_one_trains_without_validation_and_none_means_the_default(name):
    build = _models()[name]
    for train_size in (1.0, 0.999):  # 0.999 of 150 cells leaves no validation cell either
        model = build()
        with pytest.warns(UserWarning, match="no validation cells"):
            model.train(max_epochs=2, train_size=train_size, enable_progress_bar=False)
        assert len(model.history["train_loss"]) == 2
        assert not any("validation" in key for key in model.history)
    with warnings.catch_warnings():  # early stopping off: nothing to warn about
        warnings.filterwarnings("error", message=".*no validation cells.*")
        build().train(
            max_epochs=1, train_size=1.0, early_stopping=False, enable_progress_bar=False
        )
    model = build()
    _train_quietly(model, max_epochs=2, train_size=None)
    assert any("validation" in key for key in model.history)


@pytest.mark.parametrize("name", ["zinb", "dgex", "sailer", "multivae"])
def test_scvi_tools_trainer_arguments_work(name):
    # Each used to fail: the monitor was passed twice; ZINB's and DGEX's validation plateau
    # stopped training after epoch 1 when validation ran every 2nd epoch; SAILER's manual
    # optimisation refused Lightning's gradient clipping.
    model = _models()[name]()
    monitor = {"dgex": "mae_train"}.get(name, "train_loss")
    _train_quietly(
        model,
        max_epochs=4,
        check_val_every_n_epoch=2,
        early_stopping=True,
        early_stopping_monitor=monitor,
        gradient_clip_val=1.0,
    )
    assert len(model.history["train_loss"]) == 4
    assert len(model.history[monitor]) == 4


class _PoisonWeights(Callback):
    """Fills one weight matrix with NaN after a step, as a diverging update would."""

    def __init__(self, epoch: int, last_step: bool):
        self.epoch, self.last_step = epoch, last_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.num_training_batches - 1 if self.last_step else 0
        if trainer.current_epoch == self.epoch and batch_idx == step:
            weight = next(p for p in pl_module.module.parameters() if p.dim() == 2)
            with torch.no_grad():
                weight.fill_(float("nan"))


@pytest.mark.parametrize(
    ("early_stopping", "epoch", "last_step", "train_size"),
    [(False, 0, False, None), (True, 0, True, None), (True, 1, True, None), (False, 2, True, 1.0)],
)
@pytest.mark.parametrize("name", ["zinb", "dgex", "sailer", "multivae"])
def test_a_diverging_run_stops_with_advice(name, early_stopping, epoch, last_step, train_size):
    # ZINB and DGEX used to train on through NaN weights and return NaN outputs silently;
    # SAILER and MultiVAE failed with torch's "found invalid values". NaN weights from an
    # epoch's last step show first in validation (early stopping restored them as the best),
    # or, without validation, in no loss at all (the last case).
    model = _models()[name]()
    advice = r"Lower the learning rate \(train\(lr=\.\.\.\); it is 0\.00\d+ now\)"
    # (MultiVAE restores no epoch of its 20-epoch KL warm-up by default)
    warmup = {"early_stopping_warmup_epochs": 0} if name == "multivae" else {}
    with pytest.raises(TrainingDivergedError, match=advice) as error:
        _train_quietly(
            model,
            max_epochs=3,
            early_stopping=early_stopping,
            callbacks=[_PoisonWeights(epoch, last_step)],
            batch_size=32,
            train_size=train_size,
            **warmup,
        )
    kept = early_stopping and epoch > 0 and name != "sailer"  # SAILER keeps its last weights
    finite = all(torch.isfinite(p).all() for p in model.module.parameters())
    assert finite == kept
    assert ("keeps the weights of its best epoch" in str(error.value)) == kept
    assert model.is_trained_ == kept  # then usable as trained
    if kept:
        assert np.isfinite(model.get_latent_representation()).all()


@pytest.mark.parametrize("invariance", [None, "adversarial"])
def test_multivae_clips_gradients_where_its_plan_optimises(invariance):
    # Lightning clips under automatic optimisation, the invariance plan under manual.
    from scgexp.model import MultiVAE

    mdata = simulate_multiome(n_cells=60, n_genes=20, n_peaks=30, seed=0)
    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    for kwargs, expected in (({}, 10.0), ({"plan_kwargs": {"gradient_clip_val": 2.0}}, 2.0)):
        if invariance is None and kwargs:
            continue  # the automatic plan takes no clipping argument
        model = MultiVAE(mdata, n_hidden=8, n_latent=2, invariance=invariance)
        _train_quietly(model, max_epochs=1, **kwargs)
        trainer = model.trainer
        if invariance is None:
            assert trainer.gradient_clip_val == expected
        else:
            assert trainer.gradient_clip_val is None
            assert trainer.lightning_module.gradient_clip_val == expected


@pytest.mark.parametrize("name", ["sailer", "multivae"])
def test_a_run_shorter_than_the_kl_annealing_warns(name):
    model = _models()[name]()
    with pytest.warns(UserWarning, match="ends before the KL weight is full"):
        model.train(max_epochs=12 if name == "sailer" else 2, enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*KL weight is full.*")
        warmup = {"plan_kwargs": {"n_epochs_warmup": 0}} if name == "sailer" else {}
        model.train(max_epochs=2, n_epochs_kl_warmup=1, enable_progress_bar=False, **warmup)


def test_small_data_trains_without_lightnings_logging_interval_warning():
    model = _models()["zinb"]()  # 150 cells: 2 training steps per epoch at batch size 128
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=1, enable_progress_bar=False)
        # 135 training cells in minibatches of 134: the one-cell rest is left out, 1 step
        model.train(max_epochs=1, batch_size=134, enable_progress_bar=False)
    assert not [w for w in caught if "logging interval" in str(w.message)]


def test_plateau_arguments_are_refused_where_the_schedule_is_lr_decay():
    model = _models()["sailer"]()
    with pytest.raises(InputError, match="lr_decay"):
        model.train(max_epochs=1, plan_kwargs={"reduce_lr_on_plateau": True})
    with pytest.raises(InputError, match="remove lr_patience"):
        model.train(max_epochs=1, plan_kwargs={"lr_patience": 3})


@pytest.mark.parametrize(
    ("n_cells", "world_size", "dropped"),
    [(143, 1, True), (143, 2, False), (286, 2, True), (286, 1, False)],
)
def test_one_cell_minibatch_is_counted_per_process(n_cells, world_size, dropped):
    """129 training cells: one process keeps 128 + 1, two processes 65 each; 258 on two: 129."""
    from types import SimpleNamespace

    import torch

    from scgexp.dataloaders import DataSplitter

    atac = simulate_scatac(n_cells=n_cells, n_peaks=300, seed=1)
    SAILER.setup_anndata(atac)
    model = SAILER(atac, n_hidden=16, n_latent=4)
    splitter = DataSplitter(model.adata_manager, train_size=0.9, batch_size=128)
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    splitter.trainer = SimpleNamespace(world_size=world_size, strategy=cpu)
    splitter.setup()
    assert splitter.drop_last is dropped


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true", "64", 64])
def test_precisions_that_change_the_weights_format_are_refused(precision):
    model = _models()["zinb"]()
    with pytest.raises(InputError, match="bf16-mixed"):
        model.train(max_epochs=1, precision=precision)


class _GradScalerOnly(MixedPrecision):
    """CUDA "16-mixed" without the float16 casts: its gradient scaler, on the CPU."""

    def autocast_context_manager(self):
        return contextlib.nullcontext()


def test_invariance_plan_clips_unscaled_gradients_under_16_mixed():
    # Gradients are still scaled when the plan clips them; clipping them at the plain bound
    # shrank every step by the scale (65536) and the model did not train.
    losses = {}
    for scaled in (False, True):
        scvi.settings.seed = 0
        mdata = simulate_multiome(n_cells=200, n_genes=40, n_peaks=60, seed=0)
        MultiVAE.setup_mudata(
            mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"}
        )
        model = MultiVAE(mdata, n_hidden=32, n_latent=4, invariance="adversarial")
        plugins = [_GradScalerOnly("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
        extra = {"plugins": plugins} if scaled else {}
        _train_quietly(model, max_epochs=4, gradient_clip_val=1.0, early_stopping=False, **extra)
        losses[scaled] = model.history["train_loss"].to_numpy(dtype=float).ravel()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert losses[True][-1] < losses[True][0] - 5


class _RecordFused(Callback):
    def on_train_start(self, trainer, pl_module):
        self.fused = [bool(o.defaults.get("fused")) for o in trainer.optimizers]


@pytest.mark.parametrize("name", ["zinb", "dgex", "sailer", "multivae"])
def test_gradients_clip_under_a_gradient_scaler(name):
    # scvi-tools 1.5 builds fused Adam by default, whose gradients Lightning refuses to clip
    # under "16-mixed" (MultiVAE clips by default). The plan asks for an unfused one then.
    # (scvi-tools 1.4, which CI installs, has no fused optimiser: this guards newer versions.)
    model = _models()[name]()
    record = _RecordFused()
    plugins = [_GradScalerOnly("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
    _train_quietly(model, max_epochs=2, gradient_clip_val=1.0, plugins=plugins, callbacks=[record])
    assert not any(record.fused)
    assert np.isfinite(model.get_latent_representation()).all()


@pytest.mark.parametrize("name", ["zinb", "dgex", "sailer", "multivae"])
def test_inference_refuses_a_batch_size_that_is_not_a_positive_whole_number(name):
    model = _models()[name]()
    _train_quietly(model, max_epochs=1)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InputError, match=r"batch_size must be a positive number of"):
            model.get_latent_representation(batch_size=bad)
    assert model.get_latent_representation(batch_size=7).shape[0] == 150
    if name == "multivae":
        with pytest.raises(InputError, match="batch_size must be a positive number of cells"):
            model.predict(model.adata, source="atac", target="rna", batch_size=0)


def test_annealing_warning_counts_the_warmup_epochs_too():
    """3 epochs after 2 warm-up epochs end 1 epoch into a 2-epoch KL ramp: warn."""
    atac = simulate_scatac(n_cells=150, n_peaks=100, seed=0)
    SAILER.setup_anndata(atac, batch_key="batch")
    model = SAILER(atac, n_hidden=16, n_latent=4)
    with pytest.warns(UserWarning, match="ends before the KL weight is full"):
        model.train(
            max_epochs=3,
            n_epochs_warmup=2,
            n_epochs_kl_warmup=2,
            enable_progress_bar=False,
        )


def test_default_learning_rate_decay_is_sailers_0_995_per_epoch():
    """The documented default decay (SAILER: x0.995 per epoch) of the invariance plan."""

    class Rates(Callback):
        def __init__(self):
            self.rates = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    atac = simulate_scatac(n_cells=150, n_peaks=100, seed=0)
    SAILER.setup_anndata(atac, batch_key="batch")
    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="mi")
    rates = Rates()
    model.train(max_epochs=3, lr=1e-3, callbacks=[rates], enable_progress_bar=False)
    np.testing.assert_allclose(rates.rates, [1e-3, 1e-3 * 0.995, 1e-3 * 0.995**2], rtol=1e-6)


def test_a_non_finite_loss_in_any_minibatch_of_the_epoch_stops_training(monkeypatch):
    """A non-finite validation loss in the epoch's first minibatch counts, not only the last."""
    counts = simulate_scrna(n_cells=150, n_genes=40, seed=0)
    ZINBAutoencoder.setup_anndata(counts, layer="counts")
    model = ZINBAutoencoder(counts, n_hidden=16, n_latent=4)
    module_loss, calls = type(model.module).loss, []

    def loss(self, *args, **kwargs):
        output = module_loss(self, *args, **kwargs)
        if not self.training:
            calls.append(1)
            if len(calls) == 1:  # the first validation minibatch only; weights stay finite
                output.loss = output.loss + float("inf")
        return output

    monkeypatch.setattr(type(model.module), "loss", loss)
    with pytest.raises(TrainingDivergedError):
        model.train(max_epochs=1, batch_size=32, train_size=0.5, enable_progress_bar=False)
    assert len(calls) > 1  # more validation minibatches followed, with finite losses
