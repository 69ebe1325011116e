"""The error scgexp raises for unusable input (light: the command line imports it first)."""


class InputError(ValueError):
    """Raised when data given to scgexp cannot be used as it is; the message says what to do.

    A :class:`ValueError`, so code that catches those catches it too.

    Examples
    --------
    >>> adata = scgexp.data.simulate_scrna(n_cells=50, n_genes=20)
    >>> try:
    ...     scgexp.model.ZINBAutoencoder.setup_anndata(adata, layer="normalised")
    ... except scgexp.data.InputError as error:
    ...     print(error)
    layer 'normalised' does not exist (layers: 'counts', 'true_mean'). Pass layer= naming an
    existing layer.
    """


InputError.__module__ = "scgexp.data"  # where users import it; tracebacks name it so
