"""Every documented call names a method and arguments that exist.

The models' docstring examples and the Python blocks of the README and docs are read, not
run (they need trained models and data), so they are checked statically here: each must parse,
and each call on a model class, a model variable or ``scgexp.data`` must name an attribute that
exists and arguments that its signature accepts.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import re
from pathlib import Path

import pytest

from scgexp import data as scgexp_data
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

ROOT = Path(__file__).resolve().parents[1]
MODELS = {cls.__name__: cls for cls in (DGEX, MultiVAE, SAILER, ZINBAutoencoder)}
# Calls that return a model of the class they are made on.
RETURNS_MODEL = {"load", "load_query_data"}


def _docstring_sources(owner, names) -> list[tuple[str, str]]:
    """``(where, source)`` of the examples of ``owner`` and of its members ``names``."""
    parser = doctest.DocTestParser()
    found = []
    for name in ["", *sorted(names)]:
        member = getattr(owner, name) if name else owner
        examples = parser.get_examples(inspect.getdoc(member) or "") if callable(member) else []
        if examples:
            source = "".join(example.source for example in examples)
            found.append((f"{owner.__name__}.{name}".rstrip("."), source))
    return found


def _markdown_sources() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    found = []
    for path in files:
        if "_build" in path.parts:
            continue
        blocks = re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)
        found += [
            (f"{path.relative_to(ROOT)} block {i}", block)
            for i, block in enumerate(blocks, 1)
            if not re.search(r"^rule \w+:", block, flags=re.M)  # Snakemake, tagged as Python
        ]
    return found


SOURCES = [
    *(
        source
        for cls in MODELS.values()
        for source in _docstring_sources(cls, [n for n in dir(cls) if not n.startswith("_")])
    ),
    *_docstring_sources(scgexp_data, scgexp_data.__all__),
    *_markdown_sources(),
]


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _model_class(name: str | None, variables: dict[str, type]) -> type | None:
    if name is None:
        return None
    if name in variables:
        return variables[name]
    return MODELS.get(name.removeprefix("scgexp.model.").removeprefix("model."))


def _check_call(call: ast.Call, function, label: str, forwarded_to=None) -> None:
    """Bind the call's arguments; keywords beyond ``**kwargs`` go to ``forwarded_to``."""
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(
        keyword.arg is None for keyword in call.keywords
    ):
        return  # *args / **kwargs: not checkable statically
    parameters = inspect.signature(function).parameters
    keywords = {keyword.arg: object() for keyword in call.keywords}
    try:
        bound = inspect.signature(function).bind_partial(*[object()] * len(call.args), **keywords)
        var_keyword = [p for p in parameters.values() if p.kind is p.VAR_KEYWORD]
        if forwarded_to is not None and var_keyword:
            forwarded = bound.arguments.get(var_keyword[0].name, {})
            inspect.signature(forwarded_to).bind_partial(**forwarded)
    except TypeError as error:
        raise AssertionError(f"{label}: {ast.unparse(call)} does not bind: {error}") from None


def _check_source(where: str, source: str, default_model: type | None) -> int:
    tree = ast.parse(source, filename=where)  # a syntax error fails the test here
    # In a model's docstrings, ``model`` is one of its instances and ``Model`` (mixins) the class.
    variables = {"model": default_model, "Model": default_model} if default_model else {}
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            cls = _model_class(_dotted(func), {})
            if cls is None and isinstance(func, ast.Attribute) and func.attr in RETURNS_MODEL:
                cls = _model_class(_dotted(func.value), {})
            if cls is not None:
                variables |= {t.id: cls for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        cls = _model_class(_dotted(func), {})
        if cls is not None:
            label = f"{where}: {cls.__name__}()"
            _check_call(node, cls.__init__, label, forwarded_to=cls._module_cls.__init__)
            checked += 1
            continue
        if not isinstance(func, ast.Attribute):
            continue
        owner = _dotted(func.value)
        cls = _model_class(owner, variables)
        if cls is not None:
            assert hasattr(cls, func.attr), f"{where}: {cls.__name__} has no {func.attr!r}"
            _check_call(node, getattr(cls, func.attr), f"{where}: {cls.__name__}.{func.attr}")
            checked += 1
        elif owner in ("scgexp.data", "data"):
            assert hasattr(scgexp_data, func.attr), f"{where}: scgexp.data has no {func.attr!r}"
            _check_call(node, getattr(scgexp_data, func.attr), f"{where}: scgexp.data")
            checked += 1
    return checked


def _default_model(where: str) -> type | None:
    return MODELS.get(where.split(".")[0])


@pytest.mark.parametrize(("where", "source"), SOURCES, ids=[where for where, _ in SOURCES])
def test_documented_calls_exist(where, source):
    _check_source(where, source, _default_model(where))


def test_checker_finds_calls_and_refuses_wrong_ones():
    assert sum(_check_source(where, s, _default_model(where)) for where, s in SOURCES) > 150
    good = "m = scgexp.model.SAILER(adata, n_latent=5)\nm.get_latent_representation(give_mean=1)"
    assert _check_source("good", good, None) == 2
    for wrong, says in [
        ("model.get_latent_representation(give_means=True)", "does not bind"),
        ("model.get_latent(adata)", "has no 'get_latent'"),
        ("ZINBAutoencoder(adata, n_latents=3)", "does not bind"),
        ("scgexp.data.simulate_scrna(n_cell=3)", "does not bind"),
    ]:
        with pytest.raises(AssertionError, match=says):
            _check_source("wrong", wrong, ZINBAutoencoder)
    with pytest.raises(SyntaxError):
        _check_source("broken", "model.train(max_epochs=3", ZINBAutoencoder)
