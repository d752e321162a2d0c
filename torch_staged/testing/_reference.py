"""A dense, per-cell, pure-PyTorch reference of :class:`STAGEDConv`.

Deliberately slow and obvious: an explicit loop over cells, a dense gene x gene
attention matrix inside each cell, and a dense (neighbour x ligand -> receptor
pair) attention block for signalling. It reads the layer's parameters, so its
outputs and gradients can be compared with the fused layer's.
"""
from typing import Dict, Tuple

import torch
from torch import Tensor

from torch_staged.typing import CELL, GENE, NEAR, REGULATES, SIGNALS, EdgeType


def _scores(conv, key: int, h_src: Tensor, h_dst: Tensor, edge_term_in: Tensor,
            src_gene: Tensor, dst_gene: Tensor) -> Tensor:
    """Attention logits for every pair of rows of ``h_src [A, D]`` (genes
    ``src_gene [A]``) and ``h_dst [B, D]`` (genes ``dst_gene [B]``) with pairwise
    edge attributes ``edge_term_in [A, B, D_e]``: ``[A, B, H]``.
    """
    logits = _attention_scores(conv, key, h_src, h_dst, edge_term_in)
    if conv.pair_dim == 'full':  # a free logit per gene pair
        table = conv.pair_table[key]  # [G, G, H]
        logits = logits + table[src_gene][:, dst_gene]
    elif conv.pair_dim:  # the gene-pair table, written out
        p_src = conv.pair_src[key][src_gene]  # [A, H, d]
        p_dst = conv.pair_dst[key][dst_gene]  # [B, H, d]
        logits = logits + torch.einsum('ahd,bhd->abh', p_src, p_dst)
    return logits


def _attention_scores(conv, key: int, h_src: Tensor, h_dst: Tensor,
                      edge_term_in: Tensor) -> Tensor:
    R, K, H, C = conv.num_relations, conv.num_cell_types, conv.heads, conv.out_channels
    D = conv.node_dim_in
    if not conv.score_state:  # the scores see the embeddings only
        F_in = conv.in_channels
        h_src, h_dst, D = h_src[:, F_in:], h_dst[:, F_in:], D - F_in
    if conv.attention == 'gat':
        a_src = conv.att_src.view(D, R * K, H)[:, key]  # [D, H]
        a_dst = conv.att_dst.view(D, R * K, H)[:, key]
        logits = (h_src @ a_src)[:, None, :] + (h_dst @ a_dst)[None, :, :]
        if conv.att_edge is not None:
            logits = logits + torch.einsum('abe,eh->abh', edge_term_in,
                                           conv.att_edge[key])
        return conv.score_activation(logits)
    w_src = conv.lin_src.view(D, R * K, H * C)[:, key]
    w_dst = conv.lin_dst.view(D, R * K, H * C)[:, key]
    hidden = (h_src @ w_src)[:, None, :] + (h_dst @ w_dst)[None, :, :]
    if conv.lin_edge is not None:
        hidden = hidden + torch.einsum('abe,ec->abc', edge_term_in, conv.lin_edge[key])
    hidden = conv.score_activation(hidden).view(*hidden.shape[:2], H, C)
    return (hidden * conv.att[key]).sum(-1)


def _masked_softmax(logits: Tensor, mask: Tensor, normalize: str = 'softmax') -> Tensor:
    """Softmax over dim 0 of ``logits [A, B, H]`` where ``mask [A, B]``; an empty
    column gives zeros. ``normalize='gate'``: ``tanh(logits)`` where ``mask``.
    """
    if normalize == 'gate':
        return torch.where(mask[:, :, None], torch.tanh(logits), torch.zeros_like(logits))
    logits = logits.masked_fill(~mask[:, :, None], float('-inf'))
    alpha = torch.softmax(logits, dim=0)
    return torch.where(mask[:, :, None], alpha, torch.zeros_like(alpha))


def dense_staged_conv(conv, x: Tensor, data,
                      ) -> Tuple[Tensor, Dict[EdgeType, Tensor]]:
    r"""Reference forward of :class:`~torch_staged.nn.STAGEDConv` on one tissue.

    Args:
        conv (STAGEDConv): The layer whose parameters are used (relations must be
            the default ``(regulates, signals)``).
        x (Tensor): ``[N*G, F]`` gene-node states.
        data (TissueData): One tissue from
            :func:`~torch_staged.data.build_tissue_graph` (uses ``near`` edges,
            ``lr_pairs``, ``gene_names``, ``autocrine`` and the ``regulates`` edges).

    Returns:
        The output ``[N*G, out_dim]`` and ``{relation: alpha [E_r, H]}`` in the
        relation's own edge order.
    """
    if tuple(conv.relations) != (REGULATES, SIGNALS):
        raise ValueError("The reference covers the default relations only")
    G, K, H = conv.num_genes, conv.num_cell_types, conv.heads
    num_cells = data[CELL].num_nodes
    cell_type = data[CELL].cell_type.tolist()
    node_type = data[CELL].cell_type[data[GENE].cell]
    h = conv.node_features(x, data[GENE].gene, node_type).view(num_cells, G, -1)
    F_in = conv.in_channels
    h_msg = h if conv.value_embedding else h[..., :F_in]
    if conv.lin_value is not None:  # node-level value features, written out
        W, b = conv.lin_value.weight, conv.lin_value.bias
        psi = torch.tanh(h @ W.t() + b)
        if not conv.value_embedding:  # centred at a silent source
            silent = torch.cat([torch.zeros_like(h[..., :F_in]), h[..., F_in:]], -1)
            psi = psi - torch.tanh(silent @ W.t() + b)
        h_msg = torch.cat([h_msg, psi], dim=-1)
    D, De = h.size(-1), conv.edge_dim
    gene_of = {g: i for i, g in enumerate(data.gene_names)}
    pairs = [(gene_of[a], gene_of[b]) for a, b in data.lr_pairs]
    L = len(pairs)
    lig = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    rec = torch.tensor([p[1] for p in pairs], dtype=torch.long)

    reg = data[REGULATES].edge_index
    near = data[NEAR].edge_index
    near_dist = data[NEAR].edge_attr.view(-1).to(x.dtype)

    outputs, reg_alpha, sig_alpha, sig_sources = [], [], [], []
    for c in range(num_cells):  # the explicit per-cell loop
        tau = cell_type[c]
        h_c, v_c = h[c], h_msg[c]  # [G, D], [G, D + P]

        # intracellular: dense G x G attention, masked by the cell's GRN edges
        mask = torch.zeros(G, G, dtype=torch.bool)
        own = (reg[1] // G) == c
        mask[reg[0, own] % G, reg[1, own] % G] = True
        genes = torch.arange(G)
        logits = _scores(conv, 0 * K + tau, h_c, h_c, h.new_zeros(G, G, De), genes, genes)
        alpha = _masked_softmax(logits, mask, conv.normalize)  # [G_src, G_dst, H]
        agg = torch.einsum('abh,ad->bhd', alpha, v_c)
        m_reg = torch.einsum('bhd,hdc->bhc', agg, conv.value[0, tau])
        reg_alpha.append(alpha)

        # intercellular: dense (neighbour, pair) block per receptor gene
        incoming = (near[1] == c).nonzero().view(-1)
        senders = near[0, incoming].tolist()
        dists = near_dist[incoming].tolist()
        if data.autocrine:
            senders, dists = senders + [c], dists + [0.0]
        J = len(senders)
        sig_sources.append({j: p for p, j in enumerate(senders)})
        if J > 0 and L > 0:
            h_src = h[torch.tensor(senders)][:, lig].reshape(J * L, D)  # (j, l) rows
            v_src = h_msg[torch.tensor(senders)][:, lig].reshape(J * L, -1)
            dist = torch.tensor(dists, dtype=x.dtype).repeat_interleave(L)
            attr = dist.view(J * L, 1, 1).expand(J * L, G, De)
            logits = _scores(conv, 1 * K + tau, h_src, h_c, attr, lig.repeat(J),
                             torch.arange(G))  # [J*L, G, H]
            mask = (rec.repeat(J).view(-1, 1) == torch.arange(G).view(1, -1))
            alpha = _masked_softmax(logits, mask, conv.normalize)
            agg = torch.einsum('abh,ad->bhd', alpha, v_src)
            sig_alpha.append(alpha.view(J, L, G, H))
        else:
            agg = h.new_zeros(G, H, h_msg.size(-1))
            sig_alpha.append(None)
        m_sig = torch.einsum('bhd,hdc->bhc', agg, conv.value[1, tau])
        outputs.append(torch.stack([m_reg, m_sig], dim=1))  # [G, R, H, C]

    out = torch.stack(outputs).view(num_cells * G, 2, H, -1)
    out = out.flatten(1, 3) if conv.concat else out.mean(dim=2).flatten(1, 2)
    if conv.bias is not None:
        out = out + conv.bias

    # per-edge attention, in each relation's own edge order
    a_reg = torch.stack([reg_alpha[int(v) // G][int(u) % G, int(v) % G]
                         for u, v in reg.t()]) if reg.numel() else x.new_zeros(0, H)
    sig = data[SIGNALS].edge_index
    lr_id = data[SIGNALS].lr_pair
    rows = []
    for e in range(sig.size(1)):
        j, i = int(sig[0, e]) // G, int(sig[1, e]) // G
        rows.append(sig_alpha[i][sig_sources[i][j], int(lr_id[e]), int(sig[1, e]) % G])
    a_sig = torch.stack(rows) if rows else x.new_zeros(0, H)
    return out, {REGULATES: a_reg, SIGNALS: a_sig}
