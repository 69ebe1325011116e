"""``scgexp``: train models on files and apply saved models, for pipelines and for a demo."""

from __future__ import annotations

import ast
import logging
import os
import re
import shutil
import tempfile
import warnings
from functools import partial
from pathlib import Path

import click
import pandas as pd

from scgexp._errors import InputError
from scgexp._warn import warn_user

logger = logging.getLogger(__name__)

FILE_TYPES = (".h5ad", ".h5mu")
MODEL_NAMES = ["dgex", "zinb", "sailer", "multivae"]  # the keys of _specs.MODELS


def _read(path: Path, backed: bool = False):
    """Read INPUT; ``backed`` leaves its matrices on disk (``--data-mode stream``)."""
    import anndata
    import mudata

    if not path.exists():
        raise InputError(f"{path} does not exist.")
    if path.is_dir():
        raise InputError(f"{path} is a folder; INPUT must be a {path.suffix or '.h5ad'} file.")
    kind = _file_kind(path)  # mudata >= 0.4 reads an AnnData as a MuData without modalities
    if kind is not None and kind != path.suffix.lower():
        raise InputError(_misnamed(path, kind))
    try:
        if path.suffix.lower() == ".h5ad":
            return anndata.read_h5ad(path, backed="r" if backed else None)
        return mudata.read_h5mu(path, backed=backed)
    except Exception as error:  # h5py/anndata raise many kinds for broken files
        raise InputError(f"{path} could not be read as {path.suffix}: {error}") from error


def _file_kind(path: Path) -> str | None:
    """``.h5mu`` or ``.h5ad`` from the file's own encoding, or None where it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            encoding = file.attrs.get("encoding-type")
    except Exception:  # not HDF5, or unreadable: the caller's message stands
        return None
    return {"MuData": ".h5mu", "anndata": ".h5ad"}.get(
        encoding.decode() if isinstance(encoding, bytes) else encoding
    )


def _misnamed(path: Path, kind: str) -> str:
    """Advice for a file whose content (``kind``) is not what its name says."""
    if kind == ".h5mu":
        return (
            f"{path} holds a MuData: for multivae, rename it to {path.with_suffix(kind).name}; "
            "dgex, zinb and sailer read one modality, e.g. `mdata['rna'].write_h5ad(...)`."
        )
    return (
        f"{path} holds an AnnData: for dgex, zinb or sailer, rename it to "
        f"{path.with_suffix(kind).name}; multivae needs a MuData, e.g. "
        "`mudata.MuData({'rna': rna, 'atac': atac}).write('data.h5mu')`."
    )


def _check_output(
    input_path: Path,
    output: Path,
    model_dir: Path | None = None,
    model: str | None = None,
    overwrite: bool = False,
) -> None:
    suffix = input_path.suffix.lower()  # .H5AD as .h5ad
    if model is not None and (suffix == ".h5mu") != (model == "multivae"):
        kind = _file_kind(input_path) if input_path.is_file() else None
        if kind is not None and kind != suffix:
            raise InputError(_misnamed(input_path, kind))
        example = (
            "e.g. `mudata.MuData({'rna': rna, 'atac': atac}).write('data.h5mu')`"
            if model == "multivae"
            else "e.g. one modality written with `mdata['rna'].write_h5ad(...)`"
        )
        raise InputError(
            f"{input_path}: multivae takes MuData (.h5mu); dgex, zinb and sailer take AnnData "
            f"(.h5ad), {example}."
        )
    if suffix not in FILE_TYPES:
        raise InputError(f"{input_path} is neither .h5ad nor .h5mu; convert it to AnnData first.")
    if output.suffix.lower() != suffix:
        raise InputError(f"--out must be a {suffix} file, like the input.")
    if output.resolve() == input_path.resolve() or (
        output.exists() and input_path.exists() and os.path.samefile(output, input_path)
    ):
        raise InputError("--out must differ from the input: scgexp never overwrites its input.")
    if output.exists() and not overwrite:
        raise InputError(
            f"{output} exists; pass --overwrite to replace it, or choose another --out."
        )
    if model_dir is not None and _within(output.parent, model_dir):
        raise InputError(  # load() would take a data file there for the model's own data
            "--out must lie outside the model folder; choose another --out or --model-dir."
        )
    for folder, flag in ((output.resolve().parent, "--out"), (model_dir, "--model-dir")):
        if folder is not None and not _writable(Path(folder)):
            raise InputError(f"{folder} cannot be written to; choose another {flag}.")


def _writable(folder: Path) -> bool:
    """Whether files can be made in ``folder`` (or where it would be made).

    Tried by making one, before training: ``os.access`` says yes to root and on /proc.
    """
    existing = next(p for p in (folder, *folder.resolve().parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def _write(data, output: Path) -> None:
    """Write to a temporary file beside ``output``, then rename it into place.

    A failed write (full disk, quota) leaves no truncated file that looks like a result.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    _drop_setup_entries(data)
    try:
        data.write(partial)
        os.replace(partial, output)
    except OSError as error:  # h5py's message spans lines and names no file
        if error.errno is None:
            raise
        raise OSError(error.errno, os.strerror(error.errno), str(output)) from error
    finally:
        partial.unlink(missing_ok=True)


def _drop_setup_entries(data) -> None:
    """Remove scvi-tools' setup bookkeeping (``obs["_scvi_batch"]``, ``obsm``, ``uns``).

    It only ties the data to this process's models; the saved model re-registers new data.
    """
    from scvi import REGISTRY_KEYS

    from scgexp._compat import _MANAGER_UUID_KEY, _SCVI_UUID_KEY

    columns = {f"_scvi_{key}" for key in (REGISTRY_KEYS.BATCH_KEY, REGISTRY_KEYS.LABELS_KEY)}
    for adata in (data, *getattr(data, "mod", {}).values()):
        setup = [c for c in adata.obs.columns if str(c).split(":")[-1] in columns]
        adata.obs = adata.obs.drop(columns=setup)
        for key in [k for k in adata.obsm if str(k).startswith("_scvi_extra_")]:
            del adata.obsm[key]
        for key in (_SCVI_UUID_KEY, _MANAGER_UUID_KEY):
            adata.uns.pop(key, None)


def _save_and_write(model, folder: Path, results, output: Path) -> None:
    """Save ``model`` in ``folder``, then write ``results()`` to ``output``.

    A folder this run created goes again when the results cannot be written: a rerun of the
    same command would otherwise be refused for the model left behind.
    """
    created = not folder.exists()
    model.save(str(folder), overwrite=True)
    try:
        _write(results(), output)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _padded(data, backed: bool = False):
    """A MuData whose modalities hold different cells, with all-zero rows for missing ones.

    MultiVAE reads a cell's row in every modality; an all-zero row counts as missing. Returns
    the data to use and, per padded modality, its own cells (for :func:`_unpadded`); ``data``
    is left as it is.
    """
    own = {
        name: mod.obs_names
        for name, mod in getattr(data, "mod", {}).items()
        if not mod.obs_names.equals(data.obs_names)
    }
    if not own:
        return data, own
    if backed:
        raise InputError(
            f"Modalities {', '.join(map(repr, own))} do not hold the MuData's cells in its "
            "order, which --data-mode stream cannot pad or reorder on disk; use another "
            "--data-mode, or save `scgexp.data.pad_modalities(mdata, flag_prefix=None)` and "
            "stream that."
        )
    from scgexp.data import pad_modalities

    missing = {name: data.n_obs - len(cells) for name, cells in own.items()}
    if any(missing.values()):
        logger.info(
            "Cells missing a modality (%s) get an all-zero row there, read as missing; the "
            "output keeps each modality's own cells.",
            ", ".join(f"{name!r} {count}" for name, count in missing.items() if count),
        )
    reordered = [name for name, count in missing.items() if not count]
    if reordered:
        logger.info(
            "Modalities %s hold the MuData's cells in another order; they are read in its "
            "order, and the output keeps each modality's own.",
            ", ".join(map(repr, reordered)),
        )
    return pad_modalities(data, flag_prefix=None), own


def _unpadded(result, data, own: dict, key: str):
    """``data`` with the results of its padded copy ``result``.

    That is ``obsm["X_<key>*"]``, ``uns[key]`` and the ``<key>_*`` layers, each modality's at its
    own cells.
    """
    from scgexp.data._matrix import named_layers

    if not own:
        return result
    data.obsm.update({k: v for k, v in result.obsm.items() if k.startswith(f"X_{key}")})
    data.uns[key] = result.uns[key]
    for name, mod in data.mod.items():
        rows = result.mod[name].obs_names.get_indexer(mod.obs_names)
        for layer, values in named_layers(result.mod[name]).items():
            if layer.startswith(f"{key}_"):
                mod.layers[layer] = values[rows]
    return data


def _entries(data) -> dict[str, object]:
    """The obsm, uns and layer entries of an AnnData or MuData (its modalities' layers too)."""
    from scgexp.data._matrix import named_layers

    entries = {f"obsm[{k!r}]": v for k, v in data.obsm.items()}
    entries |= {f"uns[{k!r}]": v for k, v in data.uns.items()}
    for name, adata in getattr(data, "mod", {None: data}).items():
        where = "" if name is None else f"mod[{name!r}]."
        entries |= {f"{where}layers[{k!r}]": v for k, v in named_layers(adata).items()}
    return entries


def _results(spec, model, data, options: dict):
    """The model's results for the output file; warns about entries of INPUT they replace."""
    before = _entries(data)
    result = spec.results(model, data, options)
    replaced = [k for k, v in _entries(result).items() if k in before and v is not before[k]]
    if replaced:
        warn_user(
            f"The input already has {', '.join(replaced)}; the output holds this run's results "
            "there instead (the input file is unchanged)."
        )
    stale = [k for k in before if f"layers['{spec.key}_" in k]  # left as they were
    if stale and options.get("latent_only"):
        warn_user(
            f"The input has {', '.join(stale)} from an earlier run, which --latent-only leaves "
            "in the output as they were (not this run's results)."
        )
    return result


# Python arguments that messages name, and the flags that set them here.
_FLAGS = {
    "layer": "--layer",
    "rna_layer": "--layer",
    "atac_layer": "--layer",
    "protein_layer": "--layer",
    "batch_key": "--batch-key",
    "landmark_key": "--landmark-key",
    "fill_missing": "--fill-missing",
    "rank_map": "--rank-map",
    "lr": "--lr",
    "max_epochs": "--epochs",
    "batch_size": "--batch-size",
    "unfrozen": "--unfrozen",
}
# Python argument values that have a flag of their own.
_VALUE_FLAGS = {
    "rank_map='sample'": "--rank-map-sample",
    "`adata.to_memory()`": "--data-mode memory",
}
# Python arguments that messages about training name and no command has a flag for.
_PYTHON_ONLY = ("n_epochs_warmup", "n_epochs_kl_warmup")
# Python calls that messages advise, and the commands that do the same.
_COMMANDS = {
    ".load_query_data(": ("load_query_data", "scgexp map"),
    ".load(dir, adata=": ("load", "scgexp predict"),
    ".prepare_query_anndata(": ("prepare_query_anndata", "--fill-missing"),
    ".prepare_query_mudata(": ("prepare_query_mudata", "--fill-missing"),
}


def _with_flags(message: str) -> str:
    """``message`` with the command-line flag for each Python argument it names (``layer=``)."""
    named = dict.fromkeys(re.findall(r"\b([a-z_]+)=", message))
    context = click.get_current_context(silent=True)  # only the running command's flags
    available = (
        {opt for param in context.command.params for opt in param.opts} if context else None
    )
    flags = [
        f"{name}= is {_FLAGS[name]}"
        for name in named
        if name in _FLAGS and (available is None or _FLAGS[name] in available)
    ]
    flags += [
        f"{value} is {flag}"
        for value, flag in _VALUE_FLAGS.items()
        if value in message and (available is None or flag.split()[0] in available)
    ]
    flags += [
        f"{method} is `{command}`"
        for call, (method, command) in _COMMANDS.items()
        if call in message and (context is None or f"scgexp {context.info_name}" != command)
    ]
    unset = [  # named, with no flag here
        f"{name}="
        for name in named
        if name in _PYTHON_ONLY or (name in _FLAGS and available and _FLAGS[name] not in available)
    ]
    if unset and context is not None:
        command = f"`scgexp {context.command.name}`"
        flags.append(f"{command} has no flag for {' or '.join(unset)}: use the Python API")
    return f"{message} (On the command line, {'; '.join(flags)}.)" if flags else message


def _run(action):
    """Run an action; turn any failure into a one-line error and a non-zero exit.

    The traceback is shown with ``scgexp -v``.
    """
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        with warnings.catch_warnings():  # mudata's notice of a future default, on every update
            warnings.filterwarnings("ignore", r"From 0\.4 \.update\(\)", FutureWarning)
            return action()
    except click.ClickException:
        raise
    except Exception as error:
        if logger.isEnabledFor(logging.DEBUG):
            logger.exception("scgexp failed")
        if isinstance(error, OSError) and error.strerror:
            message = f"{error.filename or ''}: {error.strerror}".lstrip(": ")
        elif isinstance(error, OSError):  # raised with a message of ours or a library's
            message = str(error)
        elif isinstance(error, InputError):
            message = _with_flags(str(error))
        else:
            message = _with_flags(f"{type(error).__name__}: {error}")
        message = message.splitlines()[0] if message else repr(error)
        if type(error).__name__ == "MisconfigurationException":  # Lightning's, e.g. no GPU
            message += (
                " (Check --accelerator, --devices and --strategy; auto finds a GPU torch sees.)"
            )
        raise click.ClickException(message) from error
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, with flags for the arguments it names (no source line)."""
    return f"{category.__name__}: {_with_flags(str(message))}\n"


def _training_options(command):
    """The options of fit and map that say how to train: epochs, lr, devices, seed."""
    options = [
        click.option("--epochs", default=None, type=click.IntRange(1), help="Maximum epochs."),
        click.option(
            "--lr",
            default=None,
            type=click.FloatRange(0, min_open=True),
            help="Learning rate (default: the model's).",
        ),
        click.option(
            "--batch-size",
            default=None,
            type=click.IntRange(1),
            help="Minibatch size (default: the model's).",
        ),
        click.option(
            "--accelerator",
            default="auto",
            show_default=True,
            help="Lightning accelerator: cpu, gpu, auto, ...",
        ),
        click.option("--devices", default="auto", show_default=True, help="Lightning devices."),
        click.option(
            "--strategy",
            default="auto",
            show_default=True,
            help="Lightning strategy, e.g. ddp_find_unused_parameters_true for several devices.",
        ),
        click.option(
            "--seed",
            default=0,
            show_default=True,
            type=click.IntRange(0, 2**32 - 1),
            help="Random seed (scvi.settings.seed): a rerun with the same seed, data, device "
            "and package versions trains the same model.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_WORDS = {"true": True, "false": False, "none": None, "null": None}  # YAML's and JSON's too


def _model_arguments(values: tuple[str, ...]) -> dict:
    """``NAME=VALUE`` pairs as keyword arguments: VALUE as a Python literal, else as text.

    ``true``/``false``/``none`` in any case are the Python values (as text, ``"false"`` would
    count as true).
    """
    arguments = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name.isidentifier():
            raise click.BadParameter(f"{value!r} is not NAME=VALUE, e.g. n_hidden=1000.")
        if name in ("adata", "mdata", "registry"):
            raise click.BadParameter(
                f"{name} is set by scgexp fit from INPUT, not by --model-arg."
            )
        if text.strip().lower() in _WORDS:
            arguments[name] = _WORDS[text.strip().lower()]
            continue
        try:
            arguments[name] = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            arguments[name] = text  # e.g. loss=gaussian
    return arguments


def _train(model, training: dict, **train_kwargs) -> bool:
    """Train with the options of :func:`_training_options`; False in all but the first process.

    With several devices each process trains; only the first one writes results.
    """
    devices = training["devices"]
    train_kwargs |= {
        "accelerator": training["accelerator"],
        "devices": int(devices) if devices.isdigit() else devices,
        "strategy": training["strategy"],
    }
    if training["epochs"] is not None:
        train_kwargs["max_epochs"] = training["epochs"]
    if training["lr"] is not None:
        train_kwargs["lr"] = training["lr"]
    if training["batch_size"] is not None:
        train_kwargs["batch_size"] = training["batch_size"]
    # scvi-tools writes the training history of several processes to disk, by default into
    # ./lightning_logs; a pipeline's working folder is no place for it.
    with tempfile.TemporaryDirectory(prefix="scgexp_logs_") as logs:
        model.train(**train_kwargs, log_save_dir=logs)
    return getattr(model.trainer, "global_rank", 0) == 0


_output = partial(  # fit, predict and map
    click.option,
    "--out",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
_TRANSCRIPTOME = (
    "Output file (same type as INPUT): the input with the results added (dgex: a new file "
    "with the predicted transcriptome)."
)
_latent_only = click.option(  # fit, predict and map
    "--latent-only",
    is_flag=True,
    help="zinb, multivae: write the latent spaces only, without the per-feature result layers "
    "(dense cells x features, large for many cells or peaks).",
)

_fill_missing = partial(click.option, "--fill-missing", is_flag=True)  # predict and map
_ADD_MISSING = (
    "add the model's features absent from INPUT as zeros (read as not detected; with a "
    "warning) and put INPUT's features in the model's order, so the output holds the model's "
    "features."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scgexp")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logging.")
def main(verbose: bool) -> None:
    """Deep-learning models for gene expression, as scvi-tools models."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    if not verbose:  # Lightning advertises its cloud services on every fit
        for package in ("pytorch", "fabric"):
            logging.getLogger(f"lightning.{package}.utilities.rank_zero").addFilter(_no_tips)
        # "Seed set to 0" came before errors, which are one line (the seed is --seed's)
        logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


@main.command()
@click.option(
    "--out",
    "out_dir",
    default="scgexp_demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Report folder.",
)
@click.option(
    "--epochs",
    default=None,
    type=click.IntRange(1),
    help="Maximum epochs per model (default: each model's demo setting; early stopping).",
)
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator.")
def demo(out_dir: Path, epochs: int | None, accelerator: str) -> None:
    """Train every model on embedded data and write a report with figures."""
    from scgexp.cli._demo import run_demo

    report = _run(lambda: run_demo(out_dir, epochs=epochs, accelerator=accelerator))
    click.echo(f"Report written to {report}")


@main.command()
@click.argument("model_name", metavar="MODEL", type=click.Choice(MODEL_NAMES))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@_output(help=_TRANSCRIPTOME)
@click.option("--layer", default=None, help="Layer to train on (default: X).")
@click.option("--batch-key", default=None, help="obs column with batches.")
@click.option(
    "--landmark-key",
    default=None,
    help="DGEX: boolean var column marking landmark genes [default: landmark].",
)
@click.option("--rna-mod", default=None, help="MultiVAE: modality with RNA (default: by name).")
@click.option("--atac-mod", default=None, help="MultiVAE: modality with ATAC (default: by name).")
@click.option(
    "--protein-mod", default=None, help="MultiVAE: modality with protein (default: by name)."
)
@click.option(
    "--model-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to save the trained model (default: next to --out).",
)
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    metavar="NAME=VALUE",
    callback=lambda _context, _param, values: _model_arguments(values),
    help="A setting of the model's constructor, e.g. --model-arg n_hidden=1000 --model-arg "
    "loss=gaussian (repeatable; VALUE as a Python literal, else as text). The settings are "
    "those of the model's class in the Python documentation.",
)
@_training_options
@click.option(
    "--data-mode",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "memory", "stream", "standard"]),
    help="Data path (see the docs' scaling page); stream leaves INPUT's matrices on disk.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file and a saved model of the same kind in --model-dir.",
)
@_latent_only
def fit(
    model_name,
    input_path,
    output,
    layer,
    batch_key,
    landmark_key,
    rna_mod,
    atac_mod,
    protein_mod,
    model_dir,
    data_mode,
    overwrite,
    latent_only,
    model_args,
    **training,
) -> None:
    """Train MODEL on INPUT (.h5ad/.h5mu); write results to --out and save the model."""
    import scvi

    from scgexp.cli._specs import MODELS

    spec = MODELS[model_name]
    options = {
        "layer": layer,
        "batch_key": batch_key,
        "landmark_key": landmark_key,
        "rna_mod": rna_mod,
        "atac_mod": atac_mod,
        "protein_mod": protein_mod,
        "latent_only": latent_only,
    }

    folder = model_dir or output.with_name(output.stem + f"_{spec.key}_model")

    def action():
        unused = [name for name, value in options.items() if value and name not in spec.options]
        if unused:
            flags = ", ".join("--" + name.replace("_", "-") for name in unused)
            verb, pronoun = ("does", "it") if len(unused) == 1 else ("do", "them")
            raise InputError(f"{flags} {verb} not apply to {model_name}; leave {pronoun} out.")
        _check_output(input_path, output, folder, model=model_name, overwrite=overwrite)
        _check_model_dir(folder, output, spec.cls.__name__, overwrite)
        original = _read(input_path, backed=data_mode == "stream")
        _ready_obs(original, options.get("batch_key"), training=True)
        data, own_cells = _padded(original, data_mode == "stream")
        spec.setup(data, options)
        scvi.settings.seed = training["seed"]
        model = spec.cls(data, **model_args)
        if not _train(model, training, data_mode=data_mode):
            return None
        _save_and_write(
            model,
            folder,
            lambda: _unpadded(_results(spec, model, data, options), original, own_cells, spec.key),
            output,
        )
        return folder

    folder = _run(action)
    if folder is not None:
        click.echo(f"Wrote {output}; model saved in {folder}")


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@_output(help=_TRANSCRIPTOME)
@click.option(
    "--rank-map",
    is_flag=True,
    help="DGEX: map landmarks onto the training distribution by rank (cross-platform), each "
    "gene across the samples (for samples as varied as the training data).",
)
@click.option(
    "--rank-map-sample",
    is_flag=True,
    help="DGEX: as --rank-map, but each sample's landmarks ranked among themselves (for a "
    "platform effect shared by all genes, in one cell line or tissue, or few samples).",
)
@click.option(
    "--layer",
    default=None,
    help="DGEX: layer of INPUT with the landmark values (default: the training layer if INPUT "
    "has it, else X). The other models read the layer they were trained on.",
)
@_fill_missing(
    help="dgex: fill landmarks absent from INPUT with their training mean (with a warning); "
    "zinb, sailer, multivae: " + _ADD_MISSING
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file.",
)
@_latent_only
def predict(
    model_dir: Path,
    input_path: Path,
    output: Path,
    rank_map: bool,
    rank_map_sample: bool,
    layer: str | None,
    fill_missing: bool,
    overwrite: bool,
    latent_only: bool,
) -> None:
    """Apply the model saved in MODEL_DIR to INPUT and write results to --out."""

    def action():
        spec, registry = _saved_spec(model_dir)
        if _within(output, model_dir):  # load() would take a data file there for the model's
            raise InputError("--out must lie outside MODEL_DIR: the saved model stays as it was.")
        _check_output(input_path, output, model=spec.key, overwrite=overwrite)
        if spec.key != "dgex" and (rank_map or rank_map_sample):
            raise InputError("--rank-map and --rank-map-sample apply to DGEX models only.")
        if rank_map and rank_map_sample:
            raise InputError("Pass --rank-map or --rank-map-sample, not both.")
        if spec.key != "dgex" and layer is not None:
            raise InputError(
                f"--layer applies to DGEX models only; a {spec.cls.__name__} reads the layer it "
                "was trained on."
            )
        if spec.key == "dgex" and latent_only:
            raise InputError("--latent-only does not apply to dgex, whose output is predictions.")
        given = original = _read(input_path)
        _ready_obs(original, registry["setup_args"].get("batch_key"), training=False)
        if fill_missing and spec.key != "dgex":
            original = _with_model_features(spec, original, model_dir)
        data, own_cells = _padded(original)
        model = spec.cls.load(str(model_dir), adata=None if spec.key == "dgex" else data)
        flags = {
            "rank_map": "sample" if rank_map_sample else rank_map,
            "layer": layer,
            "fill_missing": fill_missing,
            "latent_only": latent_only,
            "added_modalities": _added(original, given),
        }
        added = flags["added_modalities"]
        result = _unpadded(_results(spec, model, data, flags), original, own_cells, spec.key)
        _write(_without_added_modalities(result, added, spec.key), output)

    _run(action)
    click.echo(f"Wrote {output}")


@main.command("map")
@click.argument("reference_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@_output(help="Output file (same type as INPUT): the input with the results added.")
@click.option(
    "--model-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to save the query model (default: next to --out).",
)
@click.option(
    "--unfrozen",
    is_flag=True,
    help="Train every weight on INPUT, not only the new categories' (fine-tuning).",
)
@_fill_missing(help=_ADD_MISSING[0].upper() + _ADD_MISSING[1:])
@_training_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file and a saved model of the same kind in --model-dir.",
)
@_latent_only
def map_query(
    reference_dir: Path,
    input_path: Path,
    output: Path,
    model_dir: Path | None,
    unfrozen: bool,
    fill_missing: bool,
    overwrite: bool,
    latent_only: bool,
    **training,
) -> None:
    """Map INPUT, with batches the saved model never saw, onto it (scArches); write --out.

    The model saved in REFERENCE_DIR (by `scgexp fit`) is extended to INPUT's new batch
    categories, which then train on INPUT alone; the rest of the model stays as it was. The
    query model is saved in --model-dir; REFERENCE_DIR is left unchanged.
    """
    import scvi

    def action():
        spec, registry = _saved_spec(reference_dir)
        if spec.key == "dgex":
            raise InputError(
                "A DGEX model reads no batches, so there is nothing to map; use `scgexp predict`."
            )
        folder = model_dir or output.with_name(output.stem + f"_{spec.key}_query_model")
        for path, flag in ((output, "--out"), (folder, "--model-dir")):
            if _within(path, reference_dir):
                raise InputError(
                    f"{flag} must lie outside REFERENCE_DIR: the reference model stays as it was."
                )
        _check_output(input_path, output, folder, model=spec.key, overwrite=overwrite)
        _check_model_dir(folder, output, spec.cls.__name__, overwrite)
        given = original = _read(input_path)
        _ready_obs(original, registry["setup_args"].get("batch_key"), training=False)
        if fill_missing:
            original = _with_model_features(spec, original, reference_dir)
        data, own_cells = _padded(original)
        scvi.settings.seed = training["seed"]
        model = spec.cls.load_query_data(
            data, str(reference_dir), accelerator=training["accelerator"], unfrozen=unfrozen
        )
        if not _train(model, training):
            return None
        added = _added(original, given)
        flags = {"latent_only": latent_only, "added_modalities": added}
        _save_and_write(
            model,
            folder,
            lambda: _without_added_modalities(
                _unpadded(_results(spec, model, data, flags), original, own_cells, spec.key),
                added,
                spec.key,
            ),
            output,
        )
        return folder

    folder = _run(action)
    if folder is not None:
        click.echo(f"Wrote {output}; query model saved in {folder}")


def _with_model_features(spec, data, model_dir: Path):
    """A copy of ``data`` with the saved model's features in its order, zeros where missing."""
    if hasattr(data, "mod"):
        return spec.cls.prepare_query_mudata(data, str(model_dir), inplace=False)
    return spec.cls.prepare_query_anndata(data, str(model_dir), inplace=False)


def _added(data, given) -> list[str]:
    """The modalities of ``data`` that --fill-missing added to ``given`` (all-zero rows)."""
    return [name for name in getattr(data, "mod", {}) if name not in given.mod]


# What predicts each data type of a MultiVAE in Python, for modalities the output leaves out.
_PREDICTORS = {
    "rna": "get_normalized_expression",
    "atac": "get_normalized_accessibility",
    "protein": "get_normalized_protein",
}


def _without_added_modalities(result, added: list[str], key: str):
    """``result`` without the modalities ``added`` by --fill-missing (see :func:`_added`).

    They hold all-zero rows, read as missing, which the output should not present as measured
    (the results for them are not computed: ``added_modalities`` of the spec's options).
    """
    if not added:
        return result
    modalities = result.uns[key]["modalities"]
    types = {name: arg.removesuffix("_layer") for arg, name in modalities.items()}
    logger.info(
        "The output leaves out modality %s, which INPUT lacks (--fill-missing added it as "
        "all-zero rows to map the cells); predict it in Python with %s.",
        ", ".join(map(repr, added)),
        ", ".join(f"MultiVAE.{_PREDICTORS[types[name]]}" for name in added if name in types),
    )
    result.uns[key]["modalities"] = {a: n for a, n in modalities.items() if n not in added}
    for name in added:
        del result.mod[name]
        # MuData's membership masks: update() keeps them, and readers take them as measured cells
        result.obsm.pop(name, None)
        result.varm.pop(name, None)
    result.update()
    return result


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies in it (also under another spelling or a link)."""
    if not folder.exists():  # nothing lies in it yet: compare where both would be
        return path.resolve().is_relative_to(folder.resolve())
    for candidate in (path, *path.parents):
        if candidate.exists():
            return os.path.samefile(candidate, folder) or any(
                os.path.samefile(parent, folder) for parent in candidate.resolve().parents
            )
    return False


def _ready_obs(data, key: str | None, training: bool) -> None:
    """Make INPUT's ``obs[key]`` usable as read (the file itself is never written back).

    A MuData written from modalities keeps a column such as the batch in their ``obs`` only:
    it is combined into the MuData's ``obs`` (refused where modalities disagree on a cell).
    Training data keep no categories without cells (a subset MuData keeps them).
    """
    if key is None:
        return
    holders = [name for name, mod in getattr(data, "mod", {}).items() if key in mod.obs]
    if key not in data.obs and holders:
        combined = None
        for name in holders:
            values = data.mod[name].obs[key].astype(object).reindex(data.obs_names)
            if combined is not None:
                both = combined.notna() & values.notna()
                differs = int((combined[both] != values[both]).sum())
                if differs:
                    raise InputError(
                        f"obs[{key!r}] of modalities {', '.join(holders)} differs for {differs} "
                        f"cells; write one mdata.obs[{key!r}] into INPUT."
                    )
                values = combined.combine_first(values)
            combined = values
        data.obs[key] = pd.Categorical(combined)
        logger.info("obs[%r]: read from the obs of modalities %s.", key, ", ".join(holders))
    column = data.obs.get(key)
    if training and isinstance(getattr(column, "dtype", None), pd.CategoricalDtype):
        unused = column.cat.categories[~column.cat.categories.isin(column.unique())]
        if len(unused):
            data.obs[key] = column.cat.remove_unused_categories()
            logger.info("obs[%r]: categories without cells left out: %s.", key, list(unused))


def _saved_spec(model_dir: Path):
    """The command line's spec of the model saved in ``model_dir``, and its registry.

    Refused if there is none.
    """
    from scgexp._io import ATTRIBUTES_FILE
    from scgexp.cli._specs import spec_for_class

    if not model_dir.exists():
        raise InputError(f"{model_dir} does not exist; give the --model-dir of `scgexp fit`.")
    if not (model_dir / ATTRIBUTES_FILE).exists():
        raise InputError(f"{model_dir} holds no saved scgexp model; use `scgexp fit` first.")
    registry = _saved_registry(model_dir)
    return spec_for_class(registry["model_name"]), registry


def _saved_registry(model_dir: Path) -> dict:
    from scgexp._io import ATTRIBUTES_FILE, SafeSaveMixin

    registry = SafeSaveMixin.load_registry(model_dir)  # refuses an unreadable file
    if not isinstance(registry, dict) or "model_name" not in registry:
        raise InputError(
            f"{str(model_dir)!r} holds a damaged scgexp model ({ATTRIBUTES_FILE} names no model); "
            "save or fit the model again."
        )
    return registry


def _check_model_dir(folder: Path, output: Path, model_name: str, overwrite: bool) -> None:
    """Before training: ``fit --overwrite`` may replace a saved model of its own kind there."""
    from scgexp._io import ADATA_FILE, ATTRIBUTES_FILE, MDATA_FILE, MODEL_FILE

    if folder.resolve() == output.resolve():  # click refuses an existing file (INPUT)
        raise InputError("--model-dir must differ from --out.")
    if (folder / MODEL_FILE).exists() and not (folder / ATTRIBUTES_FILE).exists():
        raise InputError(  # e.g. an scvi-tools model saved without its data: not ours to replace
            f"{folder} holds a {MODEL_FILE} that is not a saved scgexp model (no "
            f"{ATTRIBUTES_FILE}), which would be replaced; choose another --model-dir."
        )
    if (folder / ATTRIBUTES_FILE).exists():
        try:
            saved = _saved_registry(folder)["model_name"]
        except InputError:
            raise InputError(
                f"{folder} holds a damaged model; remove it or choose another --model-dir."
            ) from None
        if saved != model_name:
            raise InputError(
                f"{folder} holds a saved {saved} model, which would be replaced; choose another "
                "--model-dir (--overwrite replaces a saved model of the same kind)."
            )
        if not overwrite:
            raise InputError(
                f"{folder} holds a saved {saved} model; pass --overwrite to replace it, or "
                "choose another --model-dir."
            )
    for name in (ADATA_FILE, MDATA_FILE):
        if (folder / name).exists():
            raise InputError(
                f"{folder} holds {name} (a model saved with its data), which would not match the "
                "new model; choose another --model-dir or move that file away."
            )
