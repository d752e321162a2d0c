"""Names of the AnnData slots that :mod:`torch_staged.io` reads and writes.

One place for every key, as squidpy's ``_constants._pkg_constants.Key``: code
refers to ``Key.obsm.spatial`` or ``Key.obsm.incoming(key_added)``, never to
string literals.
"""


class Key:
    """AnnData slot names used by :mod:`torch_staged.io` and
    :mod:`torch_staged.trajectory`.

    Example:
        >>> from torch_staged.io import Key
        >>> Key.obsm.spatial, Key.layers.pred('staged'), Key.obsp.signalling('staged')
        ('spatial', 'staged_pred', 'staged_signalling')
    """

    class obs:
        """Default columns of ``adata.obs`` in long format."""

        #: Cell (agent) id of a row.
        cell = 'cell_id'
        #: Observation time of a row.
        time = 'time'
        #: Cell type of a row.
        cell_type = 'cell_type'

    class obsm:
        """Keys of ``adata.obsm``."""

        #: Spatial coordinates ``[n_obs, 2 or 3]`` (the scverse convention).
        spatial = 'spatial'
        #: Coordinates of every section in a common frame
        #: (:func:`~torch_staged.trajectory.align_sections`).
        aligned = 'spatial_aligned'

        @staticmethod
        def incoming(key_added: str) -> str:
            """Per row, incoming signalling per ligand -> receptor pair."""
            return f'{key_added}_incoming'

        @staticmethod
        def outgoing(key_added: str) -> str:
            """Per row, outgoing signalling per ligand -> receptor pair."""
            return f'{key_added}_outgoing'

    class obsp:
        """Keys of ``adata.obsp``."""

        #: squidpy's neighbour graph (``sq.gr.spatial_neighbors``).
        connectivities = 'spatial_connectivities'
        #: squidpy's neighbour distances.
        distances = 'spatial_distances'

        @staticmethod
        def signalling(key_added: str) -> str:
            """Sparse sender-row x receiver-row signalling graph."""
            return f'{key_added}_signalling'

    class layers:
        """Keys of ``adata.layers``."""

        @staticmethod
        def pred(key_added: str) -> str:
            """Predicted expression of every row."""
            return f'{key_added}_pred'

    class uns:
        """Keys of ``adata.uns`` and of the results dict ``adata.uns[key_added]``."""

        #: Default ``key_added`` of :func:`~torch_staged.io.write_results`.
        default = 'staged'
        #: Per (cell type, source, target) intracellular strengths.
        intracellular = 'intracellular'
        #: Per (ligand, receptor, sender type, receiver type) strengths.
        intercellular = 'intercellular'
        #: Ligand -> receptor pairs in the column order of the obsm results.
        lr_pairs = 'lr_pairs'
        #: Parameters of the run (method, keys, model config).
        params = 'params'
        #: Where :func:`~torch_staged.trajectory.infer_trajectories` stores its
        #: parameters and transport costs.
        trajectory = 'staged_trajectories'
        #: In ``uns[trajectory]`` and ``uns[key_added]``: the matching of every
        #: snapshot row to an anchor cell (DataFrame indexed by the snapshot's
        #: obs names, columns ``time``, ``anchor``, ``weight``).
        matches = 'matches'
        #: Per-section transforms found by
        #: :func:`~torch_staged.trajectory.align_sections`.
        alignment = 'alignment'
