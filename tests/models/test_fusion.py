"""Fusion over text / image / audio with missing modalities, and modality dropout."""

import torch

from recsys_pipeline.models.two_tower.config import ModelConfig
from recsys_pipeline.models.two_tower.modules import ConcatFusion, ItemTower, ModalityAttentionFusion, drop_modalities

DIMS = {"text": 8, "image": 6, "audio": 4}


def _batch(present):
    torch.manual_seed(0)
    feats = {m: torch.randn(len(present), d) for m, d in DIMS.items()}
    return feats, torch.tensor(present)


def test_modality_dropout_never_empties_an_item():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(4000, 3, generator=g) < 0.7
    for p in (0.2, 0.5, 0.95):
        kept = drop_modalities(present, p, generator=g)
        assert not (kept & ~present).any()  # never invents a modality
        assert torch.equal(kept.any(dim=1), present.any(dim=1))  # never removes all of an item's
        dropped = (present & ~kept).sum().item() / present.sum().item()
        assert 0.5 * p < dropped <= p + 0.02  # about p, a little less where one is given back
    full = torch.ones(2000, 3, dtype=torch.bool)
    kept = drop_modalities(full, 0.5, generator=g)
    assert (kept.sum(dim=1) == 1).float().mean() > 0.3  # many items train with a single modality


def test_absent_modalities_do_not_change_the_fusion_output():
    for cls in (ModalityAttentionFusion, ConcatFusion):
        torch.manual_seed(1)
        fusion = cls(DIMS, width=16, n_heads=4, dropout=0.0).eval()
        feats, present = _batch([[True, False, True], [True, True, True], [False, False, False]])
        out, has = fusion(feats, present)
        garbage = {m: v.clone() for m, v in feats.items()}
        garbage["image"][0] = 1e3  # item 0 has no image: its values must not matter
        out2, _ = fusion(garbage, present)
        assert torch.allclose(out[0], out2[0]) and has.tolist() == [True, True, False]
        assert torch.equal(out[2], torch.zeros(16))  # nothing present: zeros, not NaN
        assert not torch.allclose(out[0], out[1])


def test_projecting_only_present_rows_equals_projecting_every_row():
    """The attention fusion projects a modality only where it is present; projecting every row (the reference
    below) gives the same fused vectors and the same weight gradients."""
    torch.manual_seed(2)
    fusion = ModalityAttentionFusion(DIMS, width=16, n_heads=4, dropout=0.0)
    present = torch.rand(64, 3) < 0.5
    feats = {m: torch.randn(64, d) * 10 for m, d in DIMS.items()}  # absent rows hold large garbage

    def run(project):
        fusion.zero_grad()
        original = ModalityAttentionFusion._project
        ModalityAttentionFusion._project = project
        try:
            out, _ = fusion(feats, present)
        finally:
            ModalityAttentionFusion._project = original
        out.pow(2).sum().backward()
        return out.detach(), [p.grad.clone() for p in fusion.proj.parameters()]

    out, grads = run(ModalityAttentionFusion._project)
    ref, ref_grads = run(lambda self, j, x, rows: self.proj[j](x))
    assert not present.all(dim=0).any()  # every modality is absent somewhere: the subset path ran
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_item_tower_trains_with_modality_dropout_and_keeps_content():
    config = ModelConfig(embedding_dim=16, modality_dropout=0.9, id_dropout=0.0)
    tower = ItemTower(5, DIMS, n_genres=2, config=config).train()
    feats, present = _batch([[True, True, True]] * 5)
    out = tower(torch.arange(1, 6), feats, present, torch.zeros(5, 2), torch.full((5,), 2000))
    assert out.shape == (5, 17) and torch.isfinite(out).all()


def test_attention_pooling_starts_as_the_mean_and_can_turn_a_modality_down():
    """``pooling="attention"``: zero query and biases give the mean of the present tokens (the same output as
    ``"mean"``); a large negative bias for one modality removes it from items that have another, and an item with
    only that modality still gets it (weights are over present tokens); masking and empty items as before."""
    torch.manual_seed(3)
    mean = ModalityAttentionFusion(DIMS, width=16, n_heads=4, dropout=0.0).eval()
    attn = ModalityAttentionFusion(DIMS, width=16, n_heads=4, dropout=0.0, pooling="attention").eval()
    attn.load_state_dict(mean.state_dict(), strict=False)
    feats, present = _batch([[True, True, False], [True, True, True], [False, True, False], [False, False, False]])
    out_mean, _ = mean(feats, present)
    out_attn, has = attn(feats, present)
    assert torch.allclose(out_mean, out_attn, atol=1e-6)
    assert torch.equal(out_attn[3], torch.zeros(16)) and has.tolist() == [True, True, True, False]
    with torch.no_grad():
        attn.pool_bias[1] = -50.0  # turn the image down
        # no token-to-token attention, so a token is the same whatever else is present: what is left is pooling
        attn.attn.out_proj.weight.zero_()
        attn.attn.out_proj.bias.zero_()
    mean.load_state_dict(attn.state_dict(), strict=False)  # the same tokens, pooled by their mean
    out_mean, _ = mean(feats, present)
    text_only, _ = attn(feats, torch.tensor([[True, False, False]] * 4))
    turned_down, _ = attn(feats, present)
    assert torch.allclose(turned_down[0], text_only[0], atol=1e-5)  # text + image -> text alone
    assert torch.allclose(turned_down[2], out_mean[2], atol=1e-6)  # image only: still the image
    assert not torch.allclose(turned_down[1], out_mean[1])
