"""Stage 1's loss evaluated a few query blocks at a time under activation checkpointing (blocks_per_chunk): the
same value and gradients as the whole, with far less held for the backward."""

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention.distill import AlphaHardMSE, BlockMassKL, IdentityDecay, SoftTopkMSE, Stage1Objective
from sla2_train.lit.objectives import AttentionDistillation

BQ, BK, HEADS, DIM = 32, 16, 2, 32


def every_term() -> Stage1Objective:
    """All four terms (rows-, blocks- and row-independent ones), with weights of different sizes."""
    return Stage1Objective({"soft_mse": SoftTopkMSE(1.0), "block_kl": BlockMassKL(0.5),
                            "alpha_hard": AlphaHardMSE(0.3), "identity": IdentityDecay(1e-3)})


def make(n: int, alpha_mode: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    attn = SLA2Attention(HEADS, DIM, sparsity=0.75, block_q=BQ, block_k=BK, alpha_mode=alpha_mode, seq_len=n,
                         topk="soft", tau=0.3)
    with torch.no_grad():  # a router away from the identity and α away from its initial value
        for p in (attn.router.proj_q, attn.router.proj_k):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        attn.alpha.logit.add_(torch.randn(attn.alpha.logit.shape, generator=g))
    # peaked attention (scaled q), so the teacher's rows differ from block to block
    q, k, v = (torch.randn(2, HEADS, n, DIM, generator=g) * s for s in (2.0, 1.0, 1.0))
    return attn, q, k, v


def loss_and_grads(attn, q, k, v, objective, num_query_blocks, blocks_per_chunk):
    attn.zero_grad()
    loss = attn.distill_loss(q, k, v, layout="bhnd", num_query_blocks=num_query_blocks, objective=objective,
                             generator=torch.Generator().manual_seed(7), blocks_per_chunk=blocks_per_chunk)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n, alpha_mode, num_query_blocks", [
    (200, "per_head", None),  # ragged last query block (200 = 6·32 + 8)
    (256, "per_block", None),
    (300, "per_head", 5),  # 5 of 10 query blocks drawn at random, the ragged one possibly among them
])
@pytest.mark.parametrize("blocks_per_chunk", [1, 2, 3])
def test_chunked_loss_and_gradients_equal_the_whole(n, alpha_mode, num_query_blocks, blocks_per_chunk):
    attn, q, k, v = make(n, alpha_mode, seed=n)
    whole_obj, chunk_obj = every_term(), every_term()
    whole, g_whole = loss_and_grads(attn, q, k, v, whole_obj, num_query_blocks, None)
    chunked, g_chunked = loss_and_grads(attn, q, k, v, chunk_obj, num_query_blocks, blocks_per_chunk)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-8)
    for name in whole_obj.last:  # each term, not only their sum
        torch.testing.assert_close(chunk_obj.last[name], whole_obj.last[name], rtol=1e-5, atol=1e-8)
    assert g_whole.keys() == g_chunked.keys() and {"router.proj_q", "router.proj_k", "alpha.logit"} <= g_whole.keys()
    for name, g in g_whole.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g_chunked[name], g, rtol=1e-4, atol=1e-7)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward while `fn` runs its forward."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_chunks_hold_a_fraction_of_the_memory_for_the_backward():
    """16 query blocks: the whole loss keeps its O(rows · N) softmax rows for the backward; one block at a time
    keeps the inputs of each chunk only (the chunks' forward runs again in the backward)."""
    n = 16 * BQ
    attn, q, k, v = make(n, "per_head", seed=3)
    run = lambda chunk: attn.distill_loss(q, k, v, layout="bhnd", blocks_per_chunk=chunk)  # noqa: E731
    whole, chunked = saved_bytes(lambda: run(None)), saved_bytes(lambda: run(1))
    rows_bytes = 2 * HEADS * n * n * 4  # one [B, H, N, N] float32 tensor
    assert whole >= rows_bytes, (whole, rows_bytes)
    assert chunked <= whole / 5, (chunked, whole)


def test_chunk_size_is_checked():
    with pytest.raises(ValueError, match="stage.objective.chunk_blocks must be >= 1 or null, got 0"):
        AttentionDistillation(chunk_blocks=0)
