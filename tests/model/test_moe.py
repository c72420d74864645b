"""SB-MoE block, bi-encoder and losses: the gate learns for every k, weights, N = 0, load statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.dense import pad_batch
from sbmoe_ray.model.bi_encoder import BiEncoder, ModelConfig, build_bi_encoder
from sbmoe_ray.model.losses import InBatchNegativesLoss, load_balancing_loss
from sbmoe_ray.model.moe import ExpertLoad, Routing, SBMoE

H, N, B = 32, 4, 8


def contrastive_grads(block: SBMoE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients of the in-batch-negatives loss alone (no load-balancing term) through an SB-MoE block."""
    torch.manual_seed(seed)
    queries, passages = torch.randn(B, H), torch.randn(B, H)
    block.train()
    q, _ = block(queries)
    p, _ = block(passages)
    loss, _ = InBatchNegativesLoss(0.05)(F.normalize(q, dim=-1), F.normalize(p, dim=-1))
    block.zero_grad()
    loss.backward()
    return {name: param.grad for name, param in block.named_parameters()}


@pytest.mark.parametrize("k", [1, 2, N])
def test_gate_and_noise_receive_gradient_for_every_k(k):
    torch.manual_seed(0)           # the block's weights: not whatever state the previous test left behind
    grads = contrastive_grads(SBMoE(H, N, top_k=k))
    for name in ("gate.0.weight", "gate.2.weight", "noise.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, f"{name} got no gradient with k={k}"
    # With k = 1 an expert no example was routed to rightly gets none (~13 % of initialisations for expert 0):
    # the experts that were chosen do.
    trained = [i for i in range(N) if grads[f"experts.{i}.2.weight"] is not None
               and grads[f"experts.{i}.2.weight"].abs().sum() > 0]
    assert len(trained) >= min(k, N), f"only experts {trained} got a gradient with k={k}"


def test_authors_normalised_top1_mixture_gives_the_gate_no_gradient():
    """The flaw we fix: normalize(g * E(x)) + x with top-1 makes g cancel, so the gate never learns."""
    block = SBMoE(H, N, top_k=1, noisy_gating=False).train()
    x = torch.randn(B, H)
    routing = block.route(x)
    chosen = routing.topk[:, 0]
    g = routing.probs.gather(1, chosen[:, None])                      # raw top-1 gate probability
    expert_out = torch.stack([e(x) for e in block.experts], dim=1)[torch.arange(B), chosen]
    y = F.normalize(g * expert_out, dim=-1) + x
    block.zero_grad()
    (y * torch.randn_like(y)).sum().backward()
    assert block.gate[2].weight.grad.abs().max() < 1e-6


@pytest.mark.parametrize("k,inference_top_k,expected", [(1, None, 1), (2, None, 2), (1, "all", N), (3, 1, 1)])
def test_exactly_k_renormalised_weights(k, inference_top_k, expected):
    block = SBMoE(H, N, top_k=k, inference_top_k=inference_top_k)
    x = torch.randn(B, H)
    train_routing = block.train().route(x)
    assert ((train_routing.weights > 0).sum(dim=1) == k).all()
    eval_routing = block.eval().route(x)
    assert ((eval_routing.weights > 0).sum(dim=1) == expected).all()
    for routing in (train_routing, eval_routing):
        torch.testing.assert_close(routing.weights.sum(dim=1), torch.ones(B))


def test_inference_is_deterministic_without_noise_in_eval():
    block = SBMoE(H, N, top_k=1).eval()
    x = torch.randn(B, H)
    torch.testing.assert_close(block(x)[0], block(x)[0])


def test_bad_settings_name_the_value_and_range():
    with pytest.raises(ConfigError, match=r"top_k=5.*\[1, num_experts=4\]"):
        SBMoE(H, N, top_k=5)
    with pytest.raises(ConfigError, match=r"inference_top_k='most'"):
        ModelConfig(num_experts=3, inference_top_k="most").validate()
    with pytest.raises(ConfigError, match=r"num_experts=-1"):
        ModelConfig(num_experts=-1).validate()


def test_zero_experts_equals_the_backbone_pooled_output(tiny_bert, tokenizer):
    config = ModelConfig(num_experts=0, pooling="mean", normalize=False)
    model = build_bi_encoder(config, backbone=tiny_bert).eval()
    batch = pad_batch(tokenizer(["a short query", "a somewhat longer document text"])["input_ids"],
                      tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = tiny_bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        embedding, routing = model.embed(**batch)
    assert model.head is None and routing is None
    torch.testing.assert_close(embedding, expected)


def test_bi_encoder_forward_encodes_queries_and_passages_in_one_call(tiny_bert, tokenizer):
    model = BiEncoder(tiny_bert, "cls", True, SBMoE(tiny_bert.config.hidden_size, 3, top_k=2)).train()
    queries = pad_batch(tokenizer(["q one", "q two"])["input_ids"], tokenizer.pad_token_id)
    passages = pad_batch(tokenizer(["p one is long", "p two", "p three"])["input_ids"], tokenizer.pad_token_id)
    out = model(queries, passages)
    assert out.queries.shape == (2, 32) and out.passages.shape == (3, 32)
    assert out.routing.probs.shape == (5, 3)
    torch.testing.assert_close(out.queries.norm(dim=-1), torch.ones(2))


def fixed_routing() -> Routing:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.5, 0.25, 0.25]])
    topk = torch.tensor([[0], [1], [0], [0]])
    return Routing(probs=probs, topk=topk, weights=torch.zeros_like(probs))


def test_expert_load_statistics_equal_hand_computed_values():
    load = ExpertLoad.empty(3)
    load.update(fixed_routing())
    stats = load.summary()
    # counts [3, 1, 0] -> shares 0.75, 0.25, 0; mean count 4/3
    assert stats["expert_0.share"] == pytest.approx(0.75) and stats["expert_2.share"] == 0.0
    assert stats["expert_1.mean_prob"] == pytest.approx((0.2 + 0.8 + 0.3 + 0.25) / 4)
    assert stats["load_max_over_mean"] == pytest.approx(3 / (4 / 3))
    assert stats["load_cv"] == pytest.approx(np.std([3, 1, 0]) / (4 / 3))
    entropies = [-sum(p * np.log(p) for p in row) for row in fixed_routing().probs.tolist()]
    assert stats["routing_entropy"] == pytest.approx(np.mean(entropies), rel=1e-6)


def test_expert_load_merges_as_sums_not_averages():
    routing = fixed_routing()
    first, second = ExpertLoad.empty(3), ExpertLoad.empty(3)
    first.update(Routing(routing.probs[:1], routing.topk[:1], routing.weights[:1]))   # 1 example
    second.update(Routing(routing.probs[1:], routing.topk[1:], routing.weights[1:]))  # 3 examples
    whole = ExpertLoad.empty(3)
    whole.update(routing)
    merged = ExpertLoad.from_tensor(first.to_tensor() + second.to_tensor())   # what all_reduce(SUM) does
    assert merged.summary() == pytest.approx(whole.summary())
    assert (first + second).summary() == pytest.approx(whole.summary())
    averaged = (first.summary()["expert_1.share"] + second.summary()["expert_1.share"]) / 2
    assert averaged != pytest.approx(whole.summary()["expert_1.share"])


def test_load_balancing_loss_is_one_when_uniform_and_grows_with_collapse():
    uniform = Routing(torch.full((4, 4), 0.25), torch.tensor([[0], [1], [2], [3]]), torch.zeros(4, 4))
    assert load_balancing_loss(uniform).item() == pytest.approx(1.0)
    collapsed = Routing(torch.tensor([[0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3]] * 4), torch.zeros(4, 1, dtype=torch.long),
                        torch.zeros(4, 4))
    assert load_balancing_loss(collapsed).item() == pytest.approx(4 * 0.9)


def test_load_balancing_loss_trains_the_gate_towards_balance():
    torch.manual_seed(0)
    block = SBMoE(H, N, top_k=1, noisy_gating=False).train()
    with torch.no_grad():
        block.gate[2].bias[0] += 5.0                                   # start collapsed on expert 0
    optimizer = torch.optim.Adam(block.gate.parameters(), lr=1e-2)
    x = torch.randn(256, H)
    before = load_balancing_loss(block.route(x)).item()
    for _ in range(100):
        optimizer.zero_grad()
        load_balancing_loss(block.route(x)).backward()
        optimizer.step()
    load = ExpertLoad.empty(N)
    load.update(block.route(x))
    assert load_balancing_loss(block.route(x)).item() < before
    assert load.summary()["load_max_over_mean"] < 2.0


def test_in_batch_negatives_loss_matches_its_formula():
    torch.manual_seed(0)
    q, p = torch.randn(3, 8), torch.randn(5, 8)
    loss, accuracy = InBatchNegativesLoss(0.5)(q, p, offset=1)
    scores = q @ p.T / 0.5
    expected = -torch.stack([scores[i].log_softmax(0)[i + 1] for i in range(3)]).mean()
    torch.testing.assert_close(loss, expected)
    assert accuracy.item() == pytest.approx(float((scores.argmax(1) == torch.arange(3) + 1).float().mean()))


def test_random_routing_learns_no_gate_routes_by_a_fixed_projection_and_reloads_the_same():
    torch.manual_seed(0)
    block = SBMoE(16, num_experts=4, top_k=2, routing="random")
    assert block.gate is None and block.noise is None
    x = torch.randn(32, 16)
    block.train()
    first = block.route(x)
    again = block.route(x)
    assert torch.equal(first.topk, again.topk)                       # no noise: the same input, the same experts
    assert torch.allclose(first.weights.sum(-1), torch.ones(32)) and set(first.weights.unique().tolist()) == {0.0, 0.5}
    assert len(set(first.topk[:, 0].tolist())) > 1                    # input-dependent
    out, _ = block(x)
    out.sum().backward()
    assert all(p.grad is not None for p in block.experts.parameters())
    assert "projection" not in dict(block.named_parameters())
    reloaded = SBMoE(16, num_experts=4, top_k=2, routing="random")
    reloaded.load_state_dict(block.state_dict())
    assert torch.equal(reloaded.route(x).topk, first.topk)


def test_random_routing_on_anisotropic_inputs_keeps_several_experts_in_use():
    torch.manual_seed(1)
    common = torch.randn(64) * 10                                     # one direction every embedding shares
    x = common + torch.randn(512, 64)
    block = SBMoE(64, num_experts=6, top_k=1, routing="random")
    uncentred = (x @ block.projection).argmax(-1)
    assert uncentred.unique().numel() == 1                            # what the uncentred projection did
    block.train()
    for batch in x.split(64):
        block.route(batch)                                            # the centre: the training inputs' mean
    block.eval()
    shares = torch.bincount(block.route(x).topk[:, 0], minlength=6).float() / len(x)
    assert (shares > 0.05).sum() >= 2 and shares.max() < 0.6
    torch.testing.assert_close(block.centre, x.mean(0), rtol=1e-4, atol=1e-4)


def test_the_authors_block_normalises_the_mixture_so_top_one_routing_gets_no_gradient_as_in_their_code():
    torch.manual_seed(2)
    block = SBMoE(16, num_experts=4, top_k=1, mixture="authors")
    x = torch.randn(8, 16)
    block.train()
    out, routing = block(x)
    torch.testing.assert_close((out - x).norm(dim=-1), torch.ones(8))        # normalize(Σ g E(x)) + x
    out.sum().backward()
    assert not any(p.requires_grad for p in block.noise.parameters())         # their optimiser leaves it out
    theirs = max(float(p.grad.abs().max()) for p in block.gate.parameters() if p.grad is not None)
    ours = SBMoE(16, num_experts=4, top_k=1)
    ours(x)[0].sum().backward()
    mine = max(float(p.grad.abs().max()) for p in ours.gate.parameters())
    assert theirs < 1e-6 < 1e-3 < mine                                          # their gate learns nothing
