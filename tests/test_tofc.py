"""TOFC: DPC-KNN against a brute-force reference, the Laplacian conditional, real bitstreams,
golden bytes, corrupt payloads, ablation switches and a two-step training smoke run."""
import math

import pytest
import scipy.stats
import torch

from splitbench import CheckpointError, ConfigError, PayloadError, create_codec
from golden import N_IMAGES, assert_golden, assert_golden_in_fresh_process, encode_images
from tests.conftest import run_cli

from baselines.tofc.dpc_knn import dpc_knn_clusters, dpc_knn_merge
from baselines.tofc.entropy import LaplacianConditional, SelectiveHyperprior, scale_table



# -- DPC-KNN ------------------------------------------------------------------------------------
def brute_force_dpc_knn(x, n_clusters, k):
    """Per-image, element-by-element DPC-KNN with the same definitions and tie rules."""
    n, c = len(x), len(x[0])
    dist = [[math.sqrt(sum((x[i][d] - x[j][d]) ** 2 for d in range(c))) / math.sqrt(c) for j in range(n)]
            for i in range(n)]
    density = []
    for i in range(n):
        nearest = sorted(dist[i])[:k]
        density.append(math.exp(-sum(v * v for v in nearest) / k))
    dmax = max(max(row) for row in dist)
    score = []
    for i in range(n):
        higher = [dist[i][j] for j in range(n)
                  if density[j] > density[i] or (density[j] == density[i] and j < i)]
        score.append((min(higher) if higher else dmax) * density[i])
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:n_clusters]
    assign = []
    for i in range(n):
        best = min(range(n_clusters), key=lambda j: (dist[i][centres[j]], j))
        assign.append(centres.index(i) if i in centres else best)
    return centres, assign


@pytest.mark.parametrize("seed,n,c,n_clusters,k", [(0, 12, 5, 4, 3), (1, 20, 8, 6, 5), (2, 9, 3, 9, 2)])
def test_dpc_knn_matches_brute_force(seed, n, c, n_clusters, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, c, generator=g, dtype=torch.float64)
    centres, assign = dpc_knn_clusters(x, n_clusters, k)
    for b in range(3):
        ref_centres, ref_assign = brute_force_dpc_knn(x[b].tolist(), n_clusters, k)
        assert centres[b].tolist() == ref_centres
        assert assign[b].tolist() == ref_assign


def test_dpc_knn_ties_are_deterministic():
    x = torch.zeros(2, 10, 4)  # every density and distance ties
    x[:, 5:] = 1.0
    a = dpc_knn_clusters(x, 3, 3)
    b = dpc_knn_clusters(x.clone(), 3, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for img in range(2):
        ref_c, ref_a = brute_force_dpc_knn(x[img].tolist(), 3, 3)
        assert a[0][img].tolist() == ref_c and a[1][img].tolist() == ref_a


def test_merge_keeps_class_token_and_means_clusters():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 1 + 16, 6, generator=g)
    merged = dpc_knn_merge(tokens, 5, 3)
    assert merged.shape == (2, 6, 6) and torch.equal(merged[:, 0], tokens[:, 0])
    _, assign = dpc_knn_clusters(tokens[:, 1:], 5, 3)
    for j in range(5):
        members = tokens[0, 1:][assign[0] == j]
        assert torch.allclose(merged[0, 1 + j], members.mean(0), atol=1e-6)
    assert dpc_knn_merge(tokens, 16, 3) is tokens  # n_clusters >= patches: no merging


# -- Laplacian conditional ------------------------------------------------------------------------
def test_laplacian_likelihood_is_the_laplace_pmf():
    cond = LaplacianConditional(scale_table())
    values = torch.tensor([[-3.0, -0.4, 0.0, 1.0, 7.0]])
    scales = torch.tensor([[0.5, 1.0, 2.0, 3.0, 1.5]])
    means = torch.tensor([[0.2, -0.1, 0.0, 0.5, 1.0]])
    lik = cond._likelihood(values, scales, means)
    ref = [scipy.stats.laplace.cdf(v + 0.5, m, s) - scipy.stats.laplace.cdf(v - 0.5, m, s)
           for v, s, m in zip(values[0].tolist(), scales[0].tolist(), means[0].tolist())]
    assert torch.allclose(lik[0].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-4, atol=1e-7)


def test_laplacian_tables_round_trip_through_compressai():
    cond = LaplacianConditional(scale_table())
    cond.update()
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(2, 4, 50, generator=g) * 20 + 0.05
    means = torch.randn(2, 4, 50, generator=g)
    x = means + torch.distributions.Laplace(0.0, scales).sample()
    x[0, 0, 0] = 1e4  # far outside the table: coded through compressai's escape path
    indexes = cond.build_indexes(scales)
    strings = cond.compress(x, indexes, means)
    out = cond.decompress(strings, indexes, means=means)
    assert torch.equal(out, torch.round(x - means) + means)


def test_selective_hyperprior_training_pass():
    model = SelectiveHyperprior(12, hyper_channels=4, hidden=16, n_experts=3)
    tokens = torch.randn(5, 7, 12)
    model.init_from_data(tokens.reshape(-1, 12))
    out, bits, weights, _ = model(tokens)
    assert out.shape == tokens.shape and bits.shape == (5,) and weights.shape == (35, 3)
    (bits.mean() + model.balance_loss(weights)).backward()
    assert model.log_step.grad is not None and model.router.weight.grad is not None


# -- the codec on shipped checkpoints ---------------------------------------------------------
@pytest.fixture(scope="module")
def tofc(task_model):
    codec = create_codec("tofc")
    codec.bind(task_model)
    return codec


def test_round_trip_decodes_the_quantised_tokens(tofc, test_images):
    images, labels = test_images
    with torch.inference_mode():
        feats = tofc.device_forward(images)
        assert feats.shape == (16, 1 + 8, 96)
        payloads = tofc.encode(feats)
        decoded = tofc.decode([p.data for p in payloads])
        logits = tofc.server_forward(decoded)
    assert decoded.shape == feats.shape
    model = tofc.coder.model  # in the quantiser's coordinates the error is rounding only
    assert ((model.to_latent(decoded) - model.to_latent(feats)).abs() <= 0.6).float().mean() > 0.999
    for p in payloads:
        assert len(p.data) < 784 and 0 < p.estimated_bits < 8 * len(p.data) + 200
    assert (logits.argmax(-1) == labels).float().mean() >= 0.75


def test_golden_bytes(tofc, test_images):  # tests/expected/tofc.json
    assert_golden("tofc", "default", encode_images(tofc, test_images[0][:N_IMAGES]))


def test_same_bytes_in_a_fresh_process():
    assert_golden_in_fresh_process("tofc")


def test_flipped_bit_is_rejected(tofc, test_images):
    images, _ = test_images
    with torch.inference_mode():
        blob = bytearray(tofc.encode(tofc.device_forward(images[:1]))[0].data)
    for pos in (0, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(PayloadError, match="tofc payload 0 .*integrity check"):
            tofc.decode([bytes(bad)])


def test_merge_only_sends_fp16_tokens(task_model, test_images):
    images, _ = test_images
    codec = create_codec("tofc", entropy="none", n_clusters=4)
    codec.bind(task_model)
    with torch.inference_mode():
        feats = codec.device_forward(images[:3])
        payloads = codec.encode(feats)
        assert all(len(p.data) == 5 * 96 * 2 for p in payloads)
        assert torch.equal(codec.decode([p.data for p in payloads]), feats.half().float())
    with pytest.raises(PayloadError, match=r"tofc \(entropy=none\) payload 0 has 7 bytes"):
        codec.decode([b"1234567"])


def test_bad_options_name_the_valid_choices():
    with pytest.raises(ConfigError, match="codec.distribution for tofc must be one of laplace, gaussian"):
        create_codec("tofc", distribution="cauchy")
    with pytest.raises(ConfigError, match="codec.entropy for tofc must be one of hyperprior, none"):
        create_codec("tofc", entropy="gzip")
    with pytest.raises(CheckpointError, match="no shipped tofc checkpoint for split=3 n_clusters=8 .*lmbda=0.123.*; shipped: n_clusters="):
        create_codec("tofc", lmbda=0.123)


def test_ablation_table_command(tmp_path, cli):
    """Every variant is a real ``python -m splitbench`` command line, run through the command's entry point in
    this process (six child interpreters cost ~35 s; the child-process launcher is tested below)."""
    from baselines.tofc.ablation import main

    def launch(args):
        code, _, stderr = cli(*args)
        return code, stderr

    path = main(["--limit", "4", "--out", str(tmp_path)], launch=launch)
    text = path.read_text()
    for label in ("merging only", "entropy model only", "n_e=1", "Gaussian", "raw"):
        assert label in text
    assert "skipped" not in text  # every variant's checkpoint ships


def test_ablation_variant_is_a_child_process_and_an_unshipped_one_is_skipped():
    from baselines.tofc.ablation import Skipped, run_variant

    with pytest.raises(Skipped, match=r"^no shipped tofc checkpoint for split=3 n_clusters=8 .*lmbda=0.123"):
        run_variant(["codec=tofc", "codec.lmbda=0.123", "data.limit=2", "measure.progress=false"])
